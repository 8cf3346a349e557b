"""From files to faces: finding clips, decoding them by timestamp, BlazeFace, tracks and people.

Model-free; imports `core` only.
"""
