"""Generated H&E slides with known answers: layouts, textures, the painter, the pyramid writer,
the offline sample's slide builder and generated cohorts (numpy only)."""
