"""The self-contained HTML report: block map, charts, images, templates."""
