/// Encapsulations a target can receive.
public enum Encapsulation: String, Sendable, Codable, CaseIterable {
    /// VXLAN, RFC 7348: UDP 4789, 8-byte header, flags 0x08, 24-bit VNI.
    case vxlan
    /// GENEVE, RFC 8926: UDP 6081, version 0, protocol 0x6558; no options,
    /// or the origin option (`Tunnel.GeneveOrigin`) when the target asks.
    case geneve
    /// ERSPAN Type II (draft-foschiano-erspan-03) in GRE (RFC 2784/2890)
    /// with a sequence number: IP protocol 47, GRE protocol 0x88BE.
    case erspan2
    /// ERSPAN Type III in GRE: GRE protocol 0x22EB, with the hook's
    /// timestamp (IEEE 1588 granularity), the direction and the hardware ID.
    case erspan3

    /// The IANA port of a UDP encapsulation; nil for GRE, which has none.
    public var defaultPort: UInt16? {
        switch self {
        case .vxlan: 4789
        case .geneve: 6081
        case .erspan2, .erspan3: nil
        }
    }

    public var isERSPAN: Bool { self == .erspan2 || self == .erspan3 }
}

/// The encapsulation seam: everything between the outer IP header and the
/// mirrored frame, for every encapsulation — which outer protocol carries
/// it, how long it is, and the per-packet fields each one has (VNI or
/// session ID, GRE sequence number, capture time, direction, interface,
/// truncation).
///
/// Two kinds of header come out of it. VXLAN and GENEVE without options
/// are the same for every copy of a session: the kernel writes them into
/// the ring record (`ringHeader`, `struct tm_record.tunnel_hdr`) and they
/// leave from there. The others carry per-packet fields: the forwarding
/// thread writes them (`write`) in front of each copy and the ring's
/// header is skipped. Trivial values only, so the hot path can copy a
/// `Tunnel` freely.
public struct Tunnel: Sendable, Equatable {
    public enum OuterProtocol: UInt8, Sendable {
        case udp = 17
        case gre = 47
    }

    public var encapsulation: Encapsulation
    /// GENEVE only: carry the origin option, with this host identifier.
    public var origin: GeneveOrigin?
    /// ERSPAN III only: the hardware ID field, 0...63.
    public var hardwareID: UInt8

    public init(_ encapsulation: Encapsulation, origin: GeneveOrigin? = nil, hardwareID: UInt8 = 0) {
        precondition(origin == nil || encapsulation == .geneve)
        precondition(hardwareID <= Self.maxHardwareID)
        self.encapsulation = encapsulation
        self.origin = origin
        self.hardwareID = hardwareID
    }

    public static let maxHardwareID: UInt8 = 63
    /// Largest ERSPAN session ID: 10 bits.
    public static let maxSessionID: UInt16 = 1023
    /// The longest header any encapsulation has (GENEVE with the origin option).
    public static let maxHeaderLength = 32

    public var outerProtocol: OuterProtocol { encapsulation.isERSPAN ? .gre : .udp }

    /// Bytes between the outer IP (and UDP) header and the frame.
    public var headerLength: Int {
        switch encapsulation {
        case .vxlan: TunnelHeader.length
        case .geneve: origin == nil ? TunnelHeader.length : TunnelHeader.length + GeneveOrigin.optionLength
        case .erspan2: ERSPAN.greLength + ERSPAN.type2Length
        case .erspan3: ERSPAN.greLength + ERSPAN.type3Length + ERSPAN.subheaderLength
        }
    }

    /// Whether each copy gets a header of its own (`write`); otherwise the
    /// ring's header goes as it is.
    public var perPacket: Bool { !(encapsulation == .vxlan || encapsulation == .geneve && origin == nil) }

    /// The 8 bytes the kernel puts in every record of a session: the real
    /// header for VXLAN and plain GENEVE, zeros for the others (skipped).
    public func ringHeader(vni: UInt32) -> [UInt8] {
        switch encapsulation {
        case .vxlan, .geneve: TunnelHeader.bytes(encapsulation, vni: vni)
        case .erspan2, .erspan3: [UInt8](repeating: 0, count: TunnelHeader.length)
        }
    }

    /// The per-packet inputs of `write`.
    public struct Fields: Sendable, Equatable {
        /// VXLAN/GENEVE network identifier, 24 bits.
        public var vni: UInt32 = 0
        /// ERSPAN session ID, 10 bits.
        public var sessionID: UInt16 = 0
        /// GRE sequence number.
        public var sequence: UInt32 = 0
        /// When the hook saw the packet: nanoseconds since the epoch.
        public var timestamp: UInt64 = 0
        public var ifindex: UInt32 = 0
        public var egress = false
        /// The copy holds less than the original frame.
        public var truncated = false
        /// The frame's own 802.1Q/802.1ad tag (kept in the frame), if any:
        /// ERSPAN's VLAN field and "tag preserved" encapsulation type.
        public var vlan: UInt16?
        /// Class of service, 3 bits: the tag's priority, else the IP precedence.
        public var cos: UInt8 = 0

        public init() {}
    }

    /// Writes the header of one copy, `headerLength` bytes, at `out`.
    @inlinable @inline(__always)
    public func write(_ f: Fields, to out: UnsafeMutableRawPointer) {
        switch encapsulation {
        case .vxlan, .geneve:
            out.storeBytes(of: UInt16(encapsulation == .vxlan ? 0x0800 : 0).bigEndian, toByteOffset: 0, as: UInt16.self)
            out.storeBytes(of: (encapsulation == .vxlan ? 0 : TunnelHeader.genevePayloadEthernet).bigEndian,
                           toByteOffset: 2, as: UInt16.self)
            out.storeBytes(of: (f.vni << 8).bigEndian, toByteOffset: 4, as: UInt32.self)
            if encapsulation == .geneve, let origin {
                out.storeBytes(of: UInt8(GeneveOrigin.optionLength / 4), toByteOffset: 0, as: UInt8.self)
                origin.write(f, to: out + TunnelHeader.length)
            }
        case .erspan2:
            ERSPAN.writeGRE(out, protocolType: ERSPAN.type2Protocol, sequence: f.sequence)
            let h = out + ERSPAN.greLength
            ERSPAN.writeCommon(h, version: 1, f)
            // Reserved (12) and Index (20): the source interface.
            h.storeBytes(of: (f.ifindex & 0xF_FFFF).bigEndian, toByteOffset: 4, as: UInt32.self)
        case .erspan3:
            ERSPAN.writeGRE(out, protocolType: ERSPAN.type3Protocol, sequence: f.sequence)
            let h = out + ERSPAN.greLength
            ERSPAN.writeCommon(h, version: 2, f)
            // IEEE 1588: nanoseconds here, seconds in the subheader.
            h.storeBytes(of: UInt32(f.timestamp % 1_000_000_000).bigEndian, toByteOffset: 4, as: UInt32.self)
            h.storeBytes(of: UInt16(0), toByteOffset: 8, as: UInt16.self) // SGT
            // P=1 (Ethernet frame) | FT=0 | HW ID | D | Gra=0b10 (1588) | O=1
            let low = UInt16(1) << 15 | UInt16(hardwareID & 0x3F) << 4 | (f.egress ? 1 << 3 : 0) | 0b10 << 1 | 1
            h.storeBytes(of: low.bigEndian, toByteOffset: 10, as: UInt16.self)
            // Platform-specific subheader, platform ID 3: port index (14
            // bits), then the upper timestamp (seconds).
            let sub = UInt32(ERSPAN.platformID) << 26 | (f.ifindex & 0x3FFF)
            h.storeBytes(of: sub.bigEndian, toByteOffset: 12, as: UInt32.self)
            h.storeBytes(of: UInt32(truncatingIfNeeded: f.timestamp / 1_000_000_000).bigEndian, toByteOffset: 16, as: UInt32.self)
        }
    }

    /// The header of one copy as an array, for tests and tools.
    public func bytes(_ f: Fields) -> [UInt8] {
        var b = [UInt8](repeating: 0, count: headerLength)
        b.withUnsafeMutableBytes { write(f, to: $0.baseAddress!) }
        return b
    }

    /// The GENEVE origin option (docs/architecture.md#the-encapsulation-seam):
    /// class 0xFFF0 (experimental use, RFC 8926 §7), type 0x01 (not
    /// critical: a receiver that does not know it skips it), 20 bytes of
    /// data — capture time in nanoseconds since the epoch (64 bits), source
    /// ifindex (32), host identifier (32), flags (32: bit 0 egress, bit 1
    /// truncated), all big-endian.
    public struct GeneveOrigin: Sendable, Equatable {
        public static let optionClass: UInt16 = 0xFFF0
        public static let optionType: UInt8 = 0x01
        /// Option header (4) and data (20).
        public static let optionLength = 24
        public static let egressFlag: UInt32 = 1 << 0
        public static let truncatedFlag: UInt32 = 1 << 1

        public var hostID: UInt32

        public init(hostID: UInt32) { self.hostID = hostID }

        /// A host identifier from the host name: FNV-1a of its bytes.
        public static func hostID(hostName: String) -> UInt32 {
            var h: UInt32 = 0x811C_9DC5
            for b in hostName.utf8 { h = (h ^ UInt32(b)) &* 0x0100_0193 }
            return h
        }

        @inlinable @inline(__always)
        func write(_ f: Fields, to out: UnsafeMutableRawPointer) {
            out.storeBytes(of: Self.optionClass.bigEndian, toByteOffset: 0, as: UInt16.self)
            out.storeBytes(of: Self.optionType, toByteOffset: 2, as: UInt8.self)
            out.storeBytes(of: UInt8((Self.optionLength - 4) / 4), toByteOffset: 3, as: UInt8.self)
            out.storeBytes(of: f.timestamp.bigEndian, toByteOffset: 4, as: UInt64.self)
            out.storeBytes(of: f.ifindex.bigEndian, toByteOffset: 12, as: UInt32.self)
            out.storeBytes(of: hostID.bigEndian, toByteOffset: 16, as: UInt32.self)
            let flags = (f.egress ? Self.egressFlag : 0) | (f.truncated ? Self.truncatedFlag : 0)
            out.storeBytes(of: flags.bigEndian, toByteOffset: 20, as: UInt32.self)
        }
    }

    /// GRE and ERSPAN constants and the fields Types II and III share.
    public enum ERSPAN {
        /// GRE with the S bit: flags/version, protocol type, sequence number.
        public static let greLength = 8
        public static let type2Length = 8
        public static let type3Length = 12
        public static let subheaderLength = 8
        public static let type2Protocol: UInt16 = 0x88BE
        public static let type3Protocol: UInt16 = 0x22EB
        /// The platform-specific subheader that carries a port index and
        /// the upper 32 bits of a 1588 timestamp.
        public static let platformID: UInt8 = 3

        @inlinable @inline(__always)
        static func writeGRE(_ out: UnsafeMutableRawPointer, protocolType: UInt16, sequence: UInt32) {
            out.storeBytes(of: UInt16(0x1000).bigEndian, toByteOffset: 0, as: UInt16.self) // S
            out.storeBytes(of: protocolType.bigEndian, toByteOffset: 2, as: UInt16.self)
            out.storeBytes(of: sequence.bigEndian, toByteOffset: 4, as: UInt32.self)
        }

        /// Ver | VLAN, then COS | En (II) or BSO (III) | T | session ID.
        @inlinable @inline(__always)
        static func writeCommon(_ h: UnsafeMutableRawPointer, version: UInt16, _ f: Fields) {
            h.storeBytes(of: (version << 12 | (f.vlan ?? 0) & 0xFFF).bigEndian, toByteOffset: 0, as: UInt16.self)
            // Type II's En: 0b11 "VLAN tag preserved in frame"; Type III's
            // BSO stays 0 (a good frame).
            let en: UInt16 = version == 1 && f.vlan != nil ? 0b11 : 0
            let word = UInt16(f.cos & 7) << 13 | en << 11 | (f.truncated ? 1 << 10 : 0) | f.sessionID & 0x3FF
            h.storeBytes(of: word.bigEndian, toByteOffset: 2, as: UInt16.self)
        }
    }
}

/// The 8-byte headers the kernel writes into ring records: VXLAN, or
/// GENEVE without options.
public enum TunnelHeader {
    /// Bytes of either header (GENEVE without options).
    public static let length = 8
    /// Largest VNI: 24 bits.
    public static let maxVNI: UInt32 = 0xFF_FFFF
    /// GENEVE protocol type for Ethernet frames (Transparent Ethernet Bridging).
    public static let genevePayloadEthernet: UInt16 = 0x6558

    /// The header of `encapsulation` (VXLAN or GENEVE) for `vni`.
    public static func bytes(_ encapsulation: Encapsulation, vni: UInt32) -> [UInt8] {
        precondition(vni <= maxVNI && !encapsulation.isERSPAN)
        var f = Tunnel.Fields()
        f.vni = vni
        return Tunnel(encapsulation).bytes(f)
    }
}

/// What a receiver reads from the headers in front of a mirrored frame.
public struct DecodedTunnel: Equatable, Sendable {
    public var encapsulation: Encapsulation
    /// The VNI (VXLAN, GENEVE) or the ERSPAN session ID.
    public var id: UInt32
    /// Bytes from the start of the given payload to the inner frame.
    public var headerLength: Int
    /// GRE sequence number (ERSPAN).
    public var sequence: UInt32?
    /// When the sender's hook saw the packet, nanoseconds since the epoch
    /// (ERSPAN III with 1588 time, the GENEVE origin option).
    public var timestamp: UInt64?
    /// The source interface (ERSPAN II index, ERSPAN III port index, origin option).
    public var ifindex: UInt32?
    /// Which way the packet crossed it (ERSPAN III, origin option).
    public var direction: Direction?
    /// The copy was cut short (ERSPAN T bit, origin option).
    public var truncated: Bool?
    /// The origin option's host identifier.
    public var hostID: UInt32?

    public init(encapsulation: Encapsulation, id: UInt32, headerLength: Int) {
        self.encapsulation = encapsulation
        self.id = id
        self.headerLength = headerLength
    }

    /// What `receive` takes from one datagram: the UDP payload of a socket
    /// (VXLAN, GENEVE), or the packet of a raw GRE socket (ERSPAN), which
    /// for IPv4 starts with the IP header. The tunnel and where the inner
    /// frame is (at least an Ethernet header); nil when it is none of them.
    public static func datagram(_ bytes: UnsafeRawBufferPointer, gre: Bool, ipv4: Bool) -> (tunnel: DecodedTunnel, frame: Range<Int>)? {
        var start = 0
        if gre && ipv4 {
            guard bytes.count >= 20, bytes[0] >> 4 == 4 else { return nil }
            start = Int(bytes[0] & 0xF) * 4
            guard start >= 20, start <= bytes.count else { return nil }
        }
        let payload = UnsafeRawBufferPointer(rebasing: bytes[start...])
        guard let d = gre ? Self.gre(payload) : Self.udp(payload), payload.count - d.headerLength >= 14 else { return nil }
        return (d, (start + d.headerLength)..<bytes.count)
    }

    /// Decodes a UDP payload as VXLAN or GENEVE, telling them apart by the
    /// header: GENEVE carries protocol type 0x6558 in bytes 2-3, where VXLAN
    /// has reserved zero bytes. Reads the GENEVE origin option when present.
    public static func udp(_ payload: UnsafeRawBufferPointer) -> DecodedTunnel? {
        guard payload.count >= TunnelHeader.length else { return nil }
        return udp(payload, as: payload[2] == 0x65 && payload[3] == 0x58 ? .geneve : .vxlan)
    }

    /// Decodes a UDP payload as `encapsulation`; nil when it is not a valid
    /// Ethernet-carrying header of that kind.
    public static func udp(_ payload: UnsafeRawBufferPointer, as encapsulation: Encapsulation) -> DecodedTunnel? {
        guard payload.count >= TunnelHeader.length else { return nil }
        let vni = UInt32(payload[4]) << 16 | UInt32(payload[5]) << 8 | UInt32(payload[6])
        switch encapsulation {
        case .vxlan:
            guard payload[0] & 0x08 != 0 else { return nil }
            return DecodedTunnel(encapsulation: .vxlan, id: vni, headerLength: TunnelHeader.length)
        case .geneve:
            let version = payload[0] >> 6
            let options = Int(payload[0] & 0x3F) * 4
            let proto = UInt16(payload[2]) << 8 | UInt16(payload[3])
            guard version == 0, proto == TunnelHeader.genevePayloadEthernet,
                  payload.count >= TunnelHeader.length + options else { return nil }
            var d = DecodedTunnel(encapsulation: .geneve, id: vni, headerLength: TunnelHeader.length + options)
            d.readGeneveOptions(UnsafeRawBufferPointer(rebasing: payload[TunnelHeader.length..<(TunnelHeader.length + options)]))
            return d
        case .erspan2, .erspan3:
            return nil
        }
    }

    private mutating func readGeneveOptions(_ options: UnsafeRawBufferPointer) {
        typealias O = Tunnel.GeneveOrigin
        var o = 0
        while o + 4 <= options.count {
            let length = 4 + Int(options[o + 3] & 0x1F) * 4
            guard o + length <= options.count else { return }
            let cls = UInt16(options[o]) << 8 | UInt16(options[o + 1])
            if cls == O.optionClass && options[o + 2] == O.optionType && length == O.optionLength {
                let data = UnsafeRawBufferPointer(rebasing: options[(o + 4)..<(o + length)])
                timestamp = UInt64(bigEndian: data.loadUnaligned(fromByteOffset: 0, as: UInt64.self))
                ifindex = UInt32(bigEndian: data.loadUnaligned(fromByteOffset: 8, as: UInt32.self))
                hostID = UInt32(bigEndian: data.loadUnaligned(fromByteOffset: 12, as: UInt32.self))
                let flags = UInt32(bigEndian: data.loadUnaligned(fromByteOffset: 16, as: UInt32.self))
                direction = flags & O.egressFlag != 0 ? .egress : .ingress
                truncated = flags & O.truncatedFlag != 0
            }
            o += length
        }
    }

    /// Decodes a GRE packet (from its GRE header on) that carries ERSPAN
    /// Type II or III; nil for anything else. Type III's timestamp is read
    /// when its granularity is IEEE 1588 with the platform ID 3 subheader
    /// (what traffic-mirror sends).
    public static func gre(_ packet: UnsafeRawBufferPointer) -> DecodedTunnel? {
        guard packet.count >= 4 else { return nil }
        let flags = UInt16(packet[0]) << 8 | UInt16(packet[1])
        guard flags & 0x7 == 0 else { return nil } // GRE version 0
        let proto = UInt16(packet[2]) << 8 | UInt16(packet[3])
        var o = 4
        if flags & 0x8000 != 0 { o += 4 } // checksum and reserved
        if flags & 0x2000 != 0 { o += 4 } // key
        var sequence: UInt32?
        if flags & 0x1000 != 0 {
            guard packet.count >= o + 4 else { return nil }
            sequence = UInt32(bigEndian: packet.loadUnaligned(fromByteOffset: o, as: UInt32.self))
            o += 4
        }
        typealias E = Tunnel.ERSPAN
        guard packet.count >= o + 8 else { return nil }
        let word0 = UInt16(packet[o]) << 8 | UInt16(packet[o + 1])
        let word1 = UInt16(packet[o + 2]) << 8 | UInt16(packet[o + 3])
        let version = word0 >> 12
        let truncatedBit = word1 & (1 << 10) != 0
        let session = UInt32(word1 & 0x3FF)
        if proto == E.type2Protocol && version == 1 {
            var d = DecodedTunnel(encapsulation: .erspan2, id: session, headerLength: o + E.type2Length)
            d.sequence = sequence
            d.truncated = truncatedBit
            d.ifindex = UInt32(bigEndian: packet.loadUnaligned(fromByteOffset: o + 4, as: UInt32.self)) & 0xF_FFFF
            return d
        }
        guard proto == E.type3Protocol && version == 2, packet.count >= o + E.type3Length else { return nil }
        let low = UInt16(packet[o + 10]) << 8 | UInt16(packet[o + 11])
        let hasSubheader = low & 1 != 0
        let length = o + E.type3Length + (hasSubheader ? E.subheaderLength : 0)
        guard packet.count >= length else { return nil }
        var d = DecodedTunnel(encapsulation: .erspan3, id: session, headerLength: length)
        d.sequence = sequence
        d.truncated = truncatedBit
        d.direction = low & (1 << 3) != 0 ? .egress : .ingress
        let granularity = (low >> 1) & 3
        if hasSubheader {
            let sub = UInt32(bigEndian: packet.loadUnaligned(fromByteOffset: o + E.type3Length, as: UInt32.self))
            if sub >> 26 == UInt32(E.platformID) {
                d.ifindex = sub & 0x3FFF
                if granularity == 0b10 {
                    let nanos = UInt64(UInt32(bigEndian: packet.loadUnaligned(fromByteOffset: o + 4, as: UInt32.self)))
                    let seconds = UInt64(UInt32(bigEndian: packet.loadUnaligned(fromByteOffset: o + E.type3Length + 4, as: UInt32.self)))
                    if nanos < 1_000_000_000 { d.timestamp = seconds * 1_000_000_000 + nanos }
                }
            }
        }
        return d
    }
}
