"""Which coded frames no other frame references, read from the packets' own header bytes.

A frame that no other frame references need not be decoded unless it is shown, so decoding a
clip at 5 samples/s can leave such packets unsent (`decode.VideoSource.sample`). Each codec says
so in its own headers, read here without decoding:

- H.264 (ITU-T H.264 7.4.1): every NAL unit of the access unit has nal_ref_idc 0.
- HEVC (ITU-T H.265 7.4.2.2): a sub-layer non-reference picture (TRAIL_N, TSA_N, STSA_N, RADL_N,
  RASL_N, RSV_VCL_N10/12/14) is referenced by no picture of its own or a lower sub-layer; at the
  stream's highest TemporalId that is no picture at all.
- MPEG-4 Part 2 (ISO/IEC 14496-2 6.3.5): a B-VOP is never a reference.

A packet is unreferenced only if every unit in it is of such a kind or is known to change nothing
the decoder keeps: an SEI message of a listed harmless type, an access unit delimiter, filler.
Parameter sets, end of sequence, and SEI messages the decoder acts on for later frames (film
grain, display orientation, recovery point, x264's version string, which switches FFmpeg's
workarounds) keep their packet. Bytes that do not parse keep their packet too.
Other codecs (VP9, AV1, ...) have no `scanner`: every packet is decoded.
"""

from __future__ import annotations

from functools import partial

import numpy as np

# H.264 nal_unit_type: non-IDR slice and its data partitions A, B, C.
H264_SLICES = frozenset({1, 2, 3, 4})
H264_SEI, H264_AUD, H264_FILLER = 6, 9, 12
# HEVC nal_unit_type of sub-layer non-reference pictures (Table 7-1: the even types below 16).
HEVC_NON_REFERENCE = frozenset({0, 2, 4, 6, 8, 10, 12, 14})
HEVC_VCL_END = 32  # types below this are coded slices
HEVC_AUD, HEVC_FILLER, HEVC_PREFIX_SEI, HEVC_SUFFIX_SEI = 35, 38, 39, 40
# SEI payload types that describe only their own frame or the stream's timing: buffering period,
# picture timing, filler, user data (registered: captions, HDR metadata; unregistered: encoder
# notes), and HEVC's decoded picture hash. Any other type keeps its packet.
HARMLESS_SEI = frozenset({0, 1, 3, 4, 5, 132})
SEI_USER_DATA_UNREGISTERED = 5
X264_VERSION = b"x264 - core"  # FFmpeg's H.264 decoder picks bug workarounds by this build number
MPEG4_VOP, MPEG4_B_VOP = 0xB6, 2  # start code of a video object plane; vop_coding_type of a B-VOP


def scanner(codec: str, extradata: bytes | None) -> Scanner | None:
    """A scanner for a stream of `codec` (FFmpeg's name), or None where the codec cannot tell."""
    extradata = bytes(extradata or b"")
    if codec == "h264":
        # avcC (MP4, Matroska) starts with configurationVersion 1; anything else is Annex B.
        size = (extradata[4] & 3) + 1 if len(extradata) > 4 and extradata[0] == 1 else 0
        return Scanner(partial(_h264_unreferenced, length_size=size))
    if codec == "hevc":
        # hvcC as FFmpeg's decoder tells it from Annex B extradata (which starts 00 00 01 or 00 00 00 01).
        if len(extradata) > 22 and (extradata[0] or extradata[1] or extradata[2] > 1):
            layers = (extradata[21] >> 3) & 7  # numTemporalLayers: 0 unknown, else how many
            return Scanner(partial(_hevc_unreferenced, length_size=(extradata[21] & 3) + 1), layers - 1, top_only=True)
        return Scanner(partial(_hevc_unreferenced, length_size=0), top_only=True)
    if codec == "mpeg4":
        return Scanner(_mpeg4_unreferenced)
    return None


class Scanner:
    """Reads each packet of one stream as the container hands them out, in decoding order."""

    def __init__(self, test, top: int = -1, top_only: bool = False):
        self._test = test  # a packet's bytes -> (unreferenced?, highest temporal id of its pictures)
        self._top = top  # the stream's highest temporal id as its header declares it; -1 unknown
        self._top_only = top_only  # only pictures of the highest temporal id can be unreferenced
        self._failed = False  # a packet that did not parse: its temporal id is unknown
        self._found: list[bool] = []
        self._layers: list[int] = []

    def add(self, data: bytes) -> None:
        """Read one packet's bytes."""
        try:
            free, layer = self._test(bytes(data))
        except (IndexError, ValueError):  # cut or garbled: decode it
            free, layer, self._failed = False, 0, True
        self._found.append(free)
        self._layers.append(layer)

    def unreferenced(self) -> np.ndarray:
        """Per packet added, whether no other frame references it (bool, in the order added)."""
        found = np.array(self._found, dtype=bool)
        if not self._top_only or not len(found):
            return found
        if self._failed and self._top < 0:
            return np.zeros_like(found)  # a picture of a higher sub-layer may hide in the unread packet
        layers = np.array(self._layers, dtype=np.int64)
        return found & (layers == max(layers.max(), self._top))  # a lower sub-layer's picture may serve a higher one


def _units(data: bytes, length_size: int) -> list[bytes]:
    """The NAL units of a packet: length-prefixed (`length_size` bytes, big-endian) or Annex B."""
    if length_size:
        units, at = [], 0
        while at < len(data):
            size = int.from_bytes(data[at : at + length_size], "big")
            at += length_size
            if size == 0 or at + size > len(data):
                raise ValueError("NAL unit length past the packet")
            units.append(data[at : at + size])
            at += size
        return units
    starts = []
    at = data.find(b"\x00\x00\x01")
    while at >= 0:
        starts.append(at + 3)
        at = data.find(b"\x00\x00\x01", at + 3)
    # A unit runs to the next start code, less the zeros before it (trailing_zero_8bits, or the
    # first byte of a 4-byte start code).
    ends = [s - 3 for s in starts[1:]] + [len(data)]
    return [data[s:e].rstrip(b"\x00") for s, e in zip(starts, ends)]


def _h264_unreferenced(data: bytes, length_size: int) -> tuple[bool, int]:
    slices, free = 0, True
    for unit in _units(data, length_size):
        ref_idc, kind = (unit[0] >> 5) & 3, unit[0] & 31
        if kind in H264_SLICES and ref_idc == 0:
            slices += 1
        elif kind == H264_SEI:
            free = free and _harmless_sei(unit[1:])
        else:
            free = free and kind in (H264_AUD, H264_FILLER)
    return free and slices > 0, 0


def _hevc_unreferenced(data: bytes, length_size: int) -> tuple[bool, int]:
    slices, top, free = 0, 0, True
    for unit in _units(data, length_size):
        kind, layer_id, temporal = (unit[0] >> 1) & 63, ((unit[0] & 1) << 5) | (unit[1] >> 3), (unit[1] & 7) - 1
        if temporal < 0:
            raise ValueError("nuh_temporal_id_plus1 is 0")
        free = free and layer_id == 0  # another layer (MV-HEVC) may predict from this one
        if kind < HEVC_VCL_END:
            slices, top = slices + 1, max(top, temporal)
            free = free and kind in HEVC_NON_REFERENCE
        elif kind in (HEVC_PREFIX_SEI, HEVC_SUFFIX_SEI):
            free = free and _harmless_sei(unit[2:])
        else:
            free = free and kind in (HEVC_AUD, HEVC_FILLER)
    return free and slices > 0, top


def _mpeg4_unreferenced(data: bytes) -> tuple[bool, int]:
    vops, at = 0, data.find(b"\x00\x00\x01")
    while at >= 0:
        if data[at + 3] != MPEG4_VOP or data[at + 4] >> 6 != MPEG4_B_VOP:  # headers, user data, I/P/S-VOPs
            return False, 0
        vops += 1
        at = data.find(b"\x00\x00\x01", at + 4)
    return vops > 0, 0


def _harmless_sei(payload: bytes) -> bool:
    """Whether every message of an SEI unit (its bytes after the NAL header) is of a harmless type."""
    rbsp, at = _unescape(payload), 0
    try:
        while at < len(rbsp) and rbsp[at:] != b"\x80":  # the rest is rbsp_trailing_bits
            kind, at = _sei_number(rbsp, at)
            size, at = _sei_number(rbsp, at)
            body = rbsp[at : at + size]
            if len(body) < size or kind not in HARMLESS_SEI:
                return False
            if kind == SEI_USER_DATA_UNREGISTERED and X264_VERSION in body:
                return False
            at += size
    except IndexError:  # a message cut short
        return False
    return True


def _sei_number(rbsp: bytes, at: int) -> tuple[int, int]:
    """An SEI payload type or size (a run of 0xFF bytes, each adding 255, then the last byte)."""
    value = 0
    while rbsp[at] == 0xFF:
        value, at = value + 255, at + 1
    return value + rbsp[at], at + 1


def _unescape(data: bytes) -> bytes:
    """The RBSP of a NAL unit's bytes: each emulation prevention byte (00 00 03 -> 00 00) removed."""
    return data.replace(b"\x00\x00\x03", b"\x00\x00")
