"""One device's learning: audio I/O, features, datasets, partitioners, models, DP-SGD, inference."""
