// Coordinator: see DESIGN.md §2.
