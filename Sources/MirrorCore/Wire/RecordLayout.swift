/// The layout of a ring record (`struct tm_record` in bpf/tm_abi.h), for
/// code that reads records without importing C. A test in
/// MirrorDataPlaneTests holds every offset here to the C struct.
public enum RecordLayout {
    public static let headerLength = 48
    public static let tstamp = 0
    public static let ifindex = 8
    public static let origLen = 12
    public static let capLen = 16
    public static let flowHash = 20
    public static let session = 24
    public static let bank = 26
    public static let direction = 27
    public static let flags = 28
    public static let l4Proto = 29
    public static let l3Off = 30
    public static let l4Off = 32
    public static let gsoSize = 34
    public static let gsoSegs = 36
    public static let sampleFirst = 38
    public static let tunnelHeader = 40

    /// `enum tm_record_flags`.
    public struct Flags: OptionSet, Sendable {
        public let rawValue: UInt8
        public init(rawValue: UInt8) { self.rawValue = rawValue }
        public static let truncatedLength = Flags(rawValue: 1 << 0)
        public static let truncatedMTU = Flags(rawValue: 1 << 1)
        public static let truncatedMax = Flags(rawValue: 1 << 2)
        public static let vlanInserted = Flags(rawValue: 1 << 3)
        public static let l4Complete = Flags(rawValue: 1 << 4)
        public static let fragment = Flags(rawValue: 1 << 5)
        public static let gso = Flags(rawValue: 1 << 6)
        public static let sliced = Flags(rawValue: 1 << 7)
    }

    /// `struct tm_slice_trailer`: after the frame of a sliced record (GSO
    /// segments, or one TCP/UDP packet), at the next 4-byte boundary.
    public static let maxSlices = 64
    public static let sliceLength = 0
    public static let sliceCount = 4
    public static let sliceSums = 8
}

/// A read-only view of one ring record: header fields, the tunnel header
/// and the frame, all in place in the ring.
public struct RecordView {
    /// Start of the record header.
    public let base: UnsafeRawPointer
    /// Bytes of the whole record as the ring sized it (header + room).
    public let length: Int

    @inlinable public init(base: UnsafeRawPointer, length: Int) {
        self.base = base
        self.length = length
    }

    @inlinable func u16(_ o: Int) -> UInt16 { base.loadUnaligned(fromByteOffset: o, as: UInt16.self) }
    @inlinable func u32(_ o: Int) -> UInt32 { base.loadUnaligned(fromByteOffset: o, as: UInt32.self) }

    @inlinable public var timestampNanoseconds: UInt64 { base.loadUnaligned(fromByteOffset: RecordLayout.tstamp, as: UInt64.self) }
    @inlinable public var ifindex: UInt32 { u32(RecordLayout.ifindex) }
    @inlinable public var originalLength: Int { Int(u32(RecordLayout.origLen)) }
    /// Frame bytes present, never more than the record holds.
    @inlinable public var capturedLength: Int {
        min(Int(u32(RecordLayout.capLen)), length - RecordLayout.headerLength)
    }
    @inlinable public var flowHash: UInt32 { u32(RecordLayout.flowHash) }
    @inlinable public var session: Int { Int(u16(RecordLayout.session)) }
    @inlinable public var bank: Int { Int(base.load(fromByteOffset: RecordLayout.bank, as: UInt8.self)) }
    @inlinable public var direction: Direction {
        base.load(fromByteOffset: RecordLayout.direction, as: UInt8.self) == 0 ? .ingress : .egress
    }
    @inlinable public var flags: RecordLayout.Flags {
        RecordLayout.Flags(rawValue: base.load(fromByteOffset: RecordLayout.flags, as: UInt8.self))
    }
    @inlinable public var l4Protocol: UInt8 { base.load(fromByteOffset: RecordLayout.l4Proto, as: UInt8.self) }
    @inlinable public var l3Offset: Int { Int(u16(RecordLayout.l3Off)) }
    @inlinable public var l4Offset: Int { Int(u16(RecordLayout.l4Off)) }
    @inlinable public var gsoSize: Int { Int(u16(RecordLayout.gsoSize)) }
    @inlinable public var gsoSegments: Int { Int(u16(RecordLayout.gsoSegs)) }
    /// For GSO records: the first segment sampling kept (see tm_abi.h).
    @inlinable public var sampleFirst: Int { Int(u16(RecordLayout.sampleFirst)) }

    /// The tunnel header followed by the captured frame: what goes after the
    /// outer UDP header, contiguous in the ring.
    @inlinable public var payload: UnsafeRawBufferPointer {
        UnsafeRawBufferPointer(start: base + RecordLayout.tunnelHeader, count: TunnelHeader.length + capturedLength)
    }

    /// A sliced record's slice length, slice count and the address of
    /// the payload sums (32-bit, host order, unfolded), or nil when the
    /// trailer does not fit the record.
    @inlinable public var slices: (length: Int, count: Int, sums: UnsafeRawPointer)? {
        let at = RecordLayout.headerLength + (capturedLength + 3) & ~3
        guard at + RecordLayout.sliceSums <= length else { return nil }
        let count = Int(u32(at + RecordLayout.sliceCount))
        guard count <= RecordLayout.maxSlices, at + RecordLayout.sliceSums + 4 * count <= length else { return nil }
        return (Int(u32(at + RecordLayout.sliceLength)), count, base + at + RecordLayout.sliceSums)
    }

    /// Slice `j`'s payload sum, folded to the 16-bit value the checksum
    /// arithmetic adds (bpf_csum_diff sums memory in host order).
    @inlinable public static func payloadSum(_ sums: UnsafeRawPointer, _ j: Int) -> UInt16 {
        var s = InternetChecksum()
        s.add(word32: sums.loadUnaligned(fromByteOffset: 4 * j, as: UInt32.self))
        return UInt16(bigEndian: s.folded)
    }

    /// The captured frame alone.
    @inlinable public var frame: UnsafeRawBufferPointer {
        UnsafeRawBufferPointer(start: base + RecordLayout.headerLength, count: capturedLength)
    }
}

/// Which way a packet crossed the interface.
public enum Direction: String, Sendable, Codable, CaseIterable {
    /// Received by the source interface.
    case ingress
    /// Sent by the source interface.
    case egress

    /// The index the kernel uses (`enum tm_direction`).
    public var index: Int { self == .ingress ? 0 : 1 }
}
