#!/usr/bin/python3
"""What the wire carries, computed without traffic-mirror's code.

    wire_segments.py WIRE.pcap [WIRE.pcap ...] --copies COPIES.pcap [--min-super N] [--snap N]

The WIRE captures hold the frames a mirrored interface carried, as a host
with offloads on hands them to the capture: TCP super-packets of up to
64 KiB (TSO, GRO) and TCP/UDP checksums left for offload (only the
pseudo-header sum in the field). This script turns each into the packets a
NIC would put on the wire -- a super-packet cut at the connection's MSS the
way Linux's GSO cuts it (sequence numbers, IPv4 IDs, lengths, CWR on the
first, FIN/PSH on the last, checksums), and every unfinished checksum
finished -- and compares them, as multisets of byte strings, with the
decapsulated copies. A checksum is finished only where the capture holds
the pseudo-header sum; anything else must be byte for byte what was
captured.

Prints one line of figures; exits 0 when the multisets are equal, 1 with
the first differences otherwise. With --snap N every expected packet is
its first N bytes, as a copy cut by packet_length N is.
"""
import argparse
import collections
import struct
import sys


def read_pcap(path):
    with open(path, "rb") as f:
        data = f.read()
    if len(data) < 24:
        return []
    magic = struct.unpack("<I", data[:4])[0]
    if magic in (0xA1B2C3D4, 0xA1B23C4D):
        endian = "<"
    elif magic in (0xD4C3B2A1, 0x4D3CB2A1):
        endian = ">"
    else:
        raise SystemExit(f"{path}: not a pcap file")
    frames, off = [], 24
    while off + 16 <= len(data):
        _, _, incl, _ = struct.unpack(endian + "IIII", data[off:off + 16])
        off += 16
        if off + incl > len(data):
            break
        frames.append(data[off:off + incl])
        off += incl
    return frames


def fold(s):
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return s


def ones_sum(b):
    if len(b) % 2:
        b += b"\0"
    return sum(struct.unpack("!%dH" % (len(b) // 2), b))


def l4_checksum(src, dst, proto, segment):
    """The full TCP/UDP checksum over the pseudo header and the segment
    (its checksum field taken as zero)."""
    pseudo = ones_sum(src + dst + struct.pack("!HH", proto, len(segment)))
    value = (~fold(pseudo + ones_sum(segment))) & 0xFFFF
    if proto == 17 and value == 0:
        value = 0xFFFF
    return value, fold(pseudo)


def ip_checksum(header):
    return (~fold(ones_sum(header))) & 0xFFFF


class Frame:
    """An untagged Ethernet/IPv4 frame with a TCP or UDP segment, or None."""

    def __init__(self, raw):
        self.raw = raw
        self.ok = False
        if len(raw) < 34 or raw[12:14] != b"\x08\x00":
            return
        ihl = (raw[14] & 0x0F) * 4
        total = struct.unpack("!H", raw[16:18])[0]
        self.proto = raw[23]
        frag = struct.unpack("!H", raw[20:22])[0]
        if ihl < 20 or 14 + total > len(raw) or frag & 0x3FFF or self.proto not in (6, 17):
            return
        self.l3, self.l4, self.end = 14, 14 + ihl, 14 + total
        self.src, self.dst = raw[26:30], raw[30:34]
        if self.proto == 6:
            if self.end - self.l4 < 20:
                return
            self.doff = (raw[self.l4 + 12] >> 4) * 4
            self.sport, self.dport, self.seq = struct.unpack("!HHI", raw[self.l4:self.l4 + 8])
            self.flags = raw[self.l4 + 13]
            self.csum_at = self.l4 + 16
        else:
            if self.end - self.l4 < 8:
                return
            self.doff = 8
            self.sport, self.dport = struct.unpack("!HH", raw[self.l4:self.l4 + 4])
            self.csum_at = self.l4 + 6
        self.ok = True

    @property
    def payload(self):
        return self.raw[self.l4 + self.doff:self.end]


def finished(f):
    """The frame with an unfinished (pseudo-header only) checksum finished;
    as captured otherwise."""
    raw = bytearray(f.raw)
    segment = bytearray(raw[f.l4:f.end])
    field = struct.unpack("!H", raw[f.csum_at:f.csum_at + 2])[0]
    segment[f.csum_at - f.l4:f.csum_at - f.l4 + 2] = b"\0\0"
    full, pseudo = l4_checksum(f.src, f.dst, f.proto, bytes(segment))
    if f.proto == 17 and field == 0:
        return bytes(raw)  # IPv4 UDP without a checksum
    if field != full and field == pseudo:
        raw[f.csum_at:f.csum_at + 2] = struct.pack("!H", full)
    return bytes(raw)


def segments(f, mss):
    """A TCP super-packet cut as Linux's GSO cuts it, segment payloads of
    mss minus the TCP options each carries."""
    size = mss - (f.doff - 20)
    payload = f.payload
    headers = bytearray(f.raw[:f.l4 + f.doff])
    ip_id = struct.unpack("!H", f.raw[18:20])[0]
    count = (len(payload) + size - 1) // size
    out = []
    for i in range(count):
        chunk = payload[i * size:(i + 1) * size]
        h = bytearray(headers)
        struct.pack_into("!H", h, 16, 20 + (f.l4 - f.l3 - 20) + f.doff + len(chunk))
        struct.pack_into("!H", h, 18, (ip_id + i) & 0xFFFF)
        struct.pack_into("!H", h, 24, 0)
        struct.pack_into("!H", h, 24, ip_checksum(bytes(h[14:f.l4])))
        struct.pack_into("!I", h, f.l4 + 4, (f.seq + i * size) & 0xFFFFFFFF)
        flags = f.flags
        if i > 0:
            flags &= ~0x80  # CWR on the first segment only
        if i < count - 1:
            flags &= ~0x09  # FIN and PSH on the last only
        h[f.l4 + 13] = flags
        struct.pack_into("!H", h, f.l4 + 16, 0)
        segment = bytes(h[f.l4:]) + chunk
        full, _ = l4_checksum(f.src, f.dst, 6, segment)
        struct.pack_into("!H", h, f.l4 + 16, full)
        out.append(bytes(h) + chunk)
    return out


def mss_options(f):
    """The MSS option of a SYN, or None."""
    opts = f.raw[f.l4 + 20:f.l4 + f.doff]
    i = 0
    while i < len(opts):
        kind = opts[i]
        if kind == 0:
            break
        if kind == 1:
            i += 1
            continue
        if i + 1 >= len(opts) or opts[i + 1] < 2:
            break
        if kind == 2 and opts[i + 1] == 4:
            return struct.unpack("!H", opts[i + 2:i + 4])[0]
        i += opts[i + 1]
    return None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("wire", nargs="+")
    ap.add_argument("--copies", required=True)
    ap.add_argument("--mtu", type=int, default=1500)
    ap.add_argument("--min-super", type=int, default=1,
                    help="fail unless at least this many super-packets were in the captures")
    ap.add_argument("--snap", type=int, default=0,
                    help="compare the first SNAP bytes of every packet (packet_length)")
    args = ap.parse_args()

    wire = [Frame(r) for path in args.wire for r in read_pcap(path)]
    # The MSS each side announced: segments toward a host carry at most the
    # MSS that host announced in its SYN.
    announced = {}
    for f in wire:
        if f.ok and f.proto == 6 and f.flags & 0x02:
            m = mss_options(f)
            if m:
                announced[(f.src, f.sport, f.dst, f.dport)] = m
    expected = collections.Counter()
    supers = 0
    for f in wire:
        if not f.ok:
            expected[f.raw] += 1
            continue
        if f.proto == 6 and f.end - f.l3 > args.mtu:
            mss = announced.get((f.dst, f.dport, f.src, f.sport))
            if mss is None:
                print(f"no SYN seen for a super-packet of {f.end - f.l3} bytes", file=sys.stderr)
                return 1
            supers += 1
            for s in segments(f, mss):
                expected[s] += 1
        else:
            expected[finished(f)] += 1
    if args.snap:
        snapped = collections.Counter()
        for raw, n in expected.items():
            snapped[raw[:args.snap]] += n
        expected = snapped
    copies = collections.Counter(read_pcap(args.copies))
    missing = expected - copies
    extra = copies - expected
    print(f"wire frames {len(wire)}, super-packets {supers}, expected copies {sum(expected.values())}, "
          f"copies {sum(copies.values())}, missing {sum(missing.values())}, unexpected {sum(extra.values())}")
    if missing or extra or supers < args.min_super:
        for name, m in (("missing", missing), ("unexpected", extra)):
            for raw in list(m)[:3]:
                print(f"{name}: {raw[:80].hex()} ({len(raw)} bytes)", file=sys.stderr)
        if supers < args.min_super:
            print(f"only {supers} super-packets, wanted {args.min_super}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
