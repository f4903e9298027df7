"""What people look at or write: the overlay window and the annotated video, timeline plots, the demo sample,
recordings (`actstream record`), the media files they write, and the checks every output passes first."""
