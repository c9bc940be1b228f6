// Models: see DESIGN.md §2.
