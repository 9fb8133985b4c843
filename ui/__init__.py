"""Qt widgets of the studio window: canvas, panels, gallery and the main window. No generation logic."""
