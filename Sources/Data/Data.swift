// Data: see DESIGN.md §2.
