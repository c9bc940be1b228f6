// Worker: see DESIGN.md §2.
