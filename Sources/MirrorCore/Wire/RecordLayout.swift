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
    }
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
