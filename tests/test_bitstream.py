"""fercli.media.bitstream against FFmpeg's own decoders (which frames `skip_frame=NONREF` leaves out)
and hand-made NAL units whose every bit the test spells out (ITU-T H.264 7.3.1, H.265 7.3.1.2)."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest
from media import write_coded
from test_decode import moving_frames

from fercli.media.bitstream import scanner

X264 = {"bf": "3", "g": "16", "x264-params": "b-adapt=0:scenecut=0"}
X265 = "log-level=error:keyint=16:bframes=3:b-adapt=0:scenecut=0"
# name: (encoder, encoder options): each container stores the NAL units its own way.
CLIPS = {
    "h264.mp4": ("libx264", X264),  # avcC: 4-byte lengths
    "h264_pyramid.mkv": ("libx264", X264 | {"x264-params": "b-adapt=0:scenecut=0:b-pyramid=normal"}),
    "h264.ts": ("libx264", X264),  # Annex B start codes
    "hevc.mp4": ("libx265", {"x265-params": X265}),  # hvcC
    "hevc.ts": ("libx265", {"x265-params": X265}),
    "mpeg4.mp4": ("mpeg4", {"bf": "2", "g": "16"}),
}


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("bitstream")
    for name, (codec, options) in CLIPS.items():
        write_coded(folder / name, moving_frames(40, 160, 120), 25, codec, "yuv420p", options=options)
    return folder


def scan(path: Path) -> tuple[list[int], np.ndarray]:
    """Each packet's pts, in decoding order, and what the scanner says of it."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        found = scanner(stream.codec_context.name, stream.codec_context.extradata)
        pts = []
        for packet in container.demux(stream):
            if packet.size:
                pts.append(packet.pts)
                found.add(bytes(packet))
    return pts, found.unreferenced()


@pytest.mark.parametrize("name", CLIPS)
def test_unreferenced_packets_are_those_ffmpegs_decoder_leaves_out_as_non_reference(clips, name):
    pts, unreferenced = scan(clips / name)
    with av.open(str(clips / name)) as container:
        container.streams.video[0].codec_context.skip_frame = "NONREF"
        kept = {frame.pts for frame in container.decode(video=0)}
    assert {p for p, u in zip(pts, unreferenced) if u} == set(pts) - kept
    assert 0 < unreferenced.sum() < len(pts)  # the clip has both kinds


def test_codecs_that_cannot_tell_have_no_scanner():
    assert all(scanner(codec, b"") is None for codec in ("vp9", "av1", "mjpeg", "prores", "ffv1"))


# -- H.264 by hand: one byte of NAL header, forbidden_zero_bit | nal_ref_idc (2) | nal_unit_type (5)


def nal(header: int | bytes, body: bytes = b"\x88\x84") -> bytes:
    return (bytes([header]) if isinstance(header, int) else header) + body


def avc(*units: bytes, length: int = 4) -> bytes:
    """Units each prefixed by its length (`length` bytes), as MP4 and Matroska store them."""
    return b"".join(len(u).to_bytes(length, "big") + u for u in units)


def sei(*messages: tuple[int, bytes]) -> bytes:
    """An SEI payload: each (type, bytes) message, then the RBSP stop bit."""

    def number(n: int) -> bytes:  # 0xFF for each 255, then the rest
        return b"\xff" * (n // 255) + bytes([n % 255])

    return b"".join(number(kind) + number(len(body)) + body for kind, body in messages) + b"\x80"


def h264(packet: bytes, length: int = 4) -> bool:
    # avcC: configurationVersion 1, profile, compatibility, level, then 0xFC | lengthSizeMinusOne.
    found = scanner("h264", bytes([1, 100, 0, 30, 0xFC | (length - 1)]) if length else b"")
    found.add(packet)
    return bool(found.unreferenced()[0])


NON_REF_SLICE, REF_SLICE, IDR = 0x01, 0x41, 0x65  # nal_ref_idc 0 / 2 with type 1; IDR (ref 3, type 5)
SEI, AUD, SPS, PPS = 0x06, 0x09, 0x67, 0x68


@pytest.mark.parametrize(
    "units, unreferenced",
    [
        ([nal(NON_REF_SLICE)], True),
        ([nal(NON_REF_SLICE), nal(NON_REF_SLICE)], True),  # two slices of one frame
        ([nal(AUD, b"\xf0"), nal(SEI, sei((1, b"\x00\x00"), (5, b"u" * 20))), nal(NON_REF_SLICE)], True),
        ([nal(REF_SLICE)], False),
        ([nal(NON_REF_SLICE), nal(REF_SLICE)], False),
        ([nal(IDR)], False),
        ([nal(SPS), nal(PPS), nal(NON_REF_SLICE)], False),  # parameter sets serve the frames after
        ([nal(AUD, b"\xf0")], False),  # no frame in it
        ([nal(SEI, sei((19, b"\x00" * 4))), nal(NON_REF_SLICE)], False),  # film grain, persists
        ([nal(SEI, sei((47, b"\x00" * 4))), nal(NON_REF_SLICE)], False),  # display orientation
        ([nal(SEI, sei((6, b"\x80"))), nal(NON_REF_SLICE)], False),  # recovery point
        ([nal(SEI, sei((5, b"u" * 16 + b"x264 - core 164"))), nal(NON_REF_SLICE)], False),  # workarounds
        ([nal(SEI, sei((5, b"u" * 300))), nal(NON_REF_SLICE)], True),  # a size over 255
        ([nal(SEI, b"\x05\x40" + b"u" * 10), nal(NON_REF_SLICE)], False),  # a message cut short
        ([nal(0x14, b"\x00" * 4), nal(NON_REF_SLICE)], False),  # an SVC/MVC extension
    ],
)
def test_h264_access_units_by_hand(units, unreferenced):
    assert h264(avc(*units)) is unreferenced
    assert h264(avc(*units, length=2), length=2) is unreferenced
    # Annex B (MPEG-TS, raw): 4- and 3-byte start codes, zeros trailing a unit.
    annex_b = b"".join((b"\x00\x00\x00\x01" if i % 2 else b"\x00\x00\x01") + u + b"\x00" for i, u in enumerate(units))
    assert h264(annex_b, length=0) is unreferenced


def test_sei_sizes_count_bytes_after_emulation_prevention():
    # A 4-byte message 00 00 00 01 is stored 00 00 03 00 01 (the 03 keeps it from reading as a
    # start code). Counted in stored bytes, the next message would start one byte early: here a
    # harmless picture timing (01) of 47 bytes instead of a display orientation (type 47, 2F).
    stored = b"\x05\x04" + b"\x00\x00\x03\x00\x01"
    assert not h264(avc(nal(SEI, stored + b"\x2f" + b"\x01" * 47 + b"\x80"), nal(NON_REF_SLICE)))
    assert h264(avc(nal(SEI, stored + b"\x80"), nal(NON_REF_SLICE)))


def test_a_length_past_the_packet_keeps_it():
    packet = avc(nal(NON_REF_SLICE))
    assert h264(packet) and not h264(packet[:-1]) and not h264(b"\x00\x00\x00\x00" + packet)


# -- HEVC by hand: two bytes, forbidden | nal_unit_type (6) | nuh_layer_id (6) | nuh_temporal_id_plus1 (3)


def hevc_unit(kind: int, temporal: int = 0, layer: int = 0, body: bytes = b"\xaf\x08") -> bytes:
    return bytes([(kind << 1) | (layer >> 5), ((layer & 31) << 3) | (temporal + 1)]) + body


def hevc(packets: list[bytes], layers: int = 0) -> list[bool]:
    # hvcC: 22 bytes, then numTemporalLayers (3 bits) | temporalIdNested | lengthSizeMinusOne (2 bits).
    found = scanner("hevc", bytes([1] + [0] * 20 + [(layers << 3) | 3, 0]))
    for packet in packets:
        found.add(packet)
    return found.unreferenced().tolist()


TRAIL_N, TRAIL_R, RASL_N, RSV_VCL_N14, CRA, VPS, EOS, PREFIX_SEI = 0, 1, 8, 14, 21, 32, 36, 39


def test_hevc_sub_layer_non_reference_pictures_by_hand():
    packets = [
        avc(hevc_unit(VPS), hevc_unit(CRA)),
        avc(hevc_unit(TRAIL_R)),
        avc(hevc_unit(TRAIL_N)),
        avc(hevc_unit(RASL_N)),
        avc(hevc_unit(RSV_VCL_N14)),
        avc(hevc_unit(PREFIX_SEI, body=sei((132, b"\x00" * 17))), hevc_unit(TRAIL_N)),  # picture hash
        avc(hevc_unit(PREFIX_SEI, body=sei((137, b"\x00" * 24))), hevc_unit(TRAIL_N)),  # not listed
        avc(hevc_unit(TRAIL_N), hevc_unit(EOS, body=b"")),  # the next picture's decoding restarts
        avc(hevc_unit(TRAIL_N, layer=1)),  # MV-HEVC's second view
    ]
    assert hevc(packets) == [False, False, True, True, True, True, False, False, False]


def test_hevc_non_reference_pictures_below_the_highest_sub_layer_serve_the_layers_above():
    # A TRAIL_N of sub-layer 0 may be referenced by a picture of sub-layer 1.
    two_layers = [avc(hevc_unit(TRAIL_N, 0)), avc(hevc_unit(TRAIL_R, 1)), avc(hevc_unit(TRAIL_N, 1))]
    assert hevc(two_layers) == [False, False, True]
    # The same when only the header says there are two sub-layers.
    assert hevc([avc(hevc_unit(TRAIL_N, 0))], layers=2) == [False]
    assert hevc([avc(hevc_unit(TRAIL_N, 0))], layers=1) == [True]
    # A packet that does not parse may hold a picture of a higher sub-layer: none is skipped...
    assert hevc([avc(hevc_unit(TRAIL_N, 0)), b"\x00\x00\x00\x09\x02"]) == [False, False]
    # ...unless the header says how many there are.
    assert hevc([avc(hevc_unit(TRAIL_N, 0)), b"\x00\x00\x00\x09\x02"], layers=1) == [True, False]


# -- MPEG-4 Part 2 by hand: a VOP start code 00 00 01 B6, then vop_coding_type in two bits


@pytest.mark.parametrize(
    "packet, unreferenced",
    [
        (b"\x00\x00\x01\xb6\x90\x12", True),  # B-VOP (10)
        (b"\x00\x00\x01\xb6\x50\x12", False),  # P-VOP (01)
        (b"\x00\x00\x01\xb6\x10\x12", False),  # I-VOP (00)
        (b"\x00\x00\x01\xb6\xd0\x12", False),  # S-VOP (11)
        (b"\x00\x00\x01\xb2DivX503b1393p\x00\x00\x01\xb6\x90\x12", False),  # user data FFmpeg acts on
        (b"\x00\x00\x01\xb6\x50\x12\x00\x00\x01\xb6\x90\x12", False),  # packed: a P-VOP and a B-VOP
        (b"\x00\x00\x01\xb6", False),  # cut
        (b"\x12\x34", False),
    ],
)
def test_mpeg4_vops_by_hand(packet, unreferenced):
    found = scanner("mpeg4", b"")
    found.add(packet)
    assert bool(found.unreferenced()[0]) is unreferenced
