"""What a row is (seconds, samples, video frames) and the table on disk: schema, writer, the one reader.

Imports `core` and `media` (a file's time bound).
"""
