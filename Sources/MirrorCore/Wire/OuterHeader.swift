/// The outer IP and UDP headers of mirrored packets toward one target, or
/// the outer IP header alone for GRE (ERSPAN); the tunnel header that
/// follows is `Tunnel`'s.
///
/// Built once per target: `writeTemplate` lays down the fields that never
/// change (addresses, protocol, ports, TTL, DF) and `constants` carries
/// their checksum sums. Per packet, `finish` patches only the lengths, the
/// IPv4 identification, the UDP source port and the checksums — on a raw
/// pointer, with trivial values, so the forwarding loop touches no
/// reference-counted state. IPv4 sets DF: the outer packet is never
/// fragmented (SPEC §4.3).
public struct OuterHeader: Sendable {
    public enum Family: UInt8, Sendable { case ipv4 = 4, ipv6 = 6 }

    /// The per-packet inputs of `finish`, all trivial.
    public struct Constants: Sendable {
        public var family: Family
        /// 20 + 8 or 40 + 8 with UDP; 20 or 40 for GRE.
        public var length: Int
        /// A UDP header follows the IP header.
        public var udp: Bool
        /// IPv4: sum of the header words that never change.
        public var ipv4Sum: UInt64
        /// IPv6: pseudo-header and UDP sum without lengths and source port.
        public var pseudoSum: UInt64
        /// The pseudo header's addresses and protocol, without the length:
        /// what a checksum left for the kernel to finish starts from.
        public var addressSum: UInt64
    }

    /// Largest header (IPv6 + UDP).
    public static let maxLength = 48

    public let constants: Constants
    public let destinationPort: UInt16
    /// 4 or 16 bytes each.
    public let source: [UInt8]
    public let destination: [UInt8]
    public let hopLimit: UInt8
    public let tunnel: Tunnel

    public var family: Family { constants.family }
    public var length: Int { constants.length }
    /// Bytes the IP, UDP and tunnel headers add to a frame.
    public var overhead: Int { length + tunnel.headerLength }

    /// `destinationPort` is ignored for GRE.
    public init(source: [UInt8], destination: [UInt8], destinationPort: UInt16, hopLimit: UInt8 = 64,
                tunnel: Tunnel = Tunnel(.vxlan)) {
        precondition(source.count == destination.count && (source.count == 4 || source.count == 16))
        let family: Family = source.count == 4 ? .ipv4 : .ipv6
        let udp = tunnel.outerProtocol == .udp
        let proto = UInt16(tunnel.outerProtocol.rawValue)
        self.source = source
        self.destination = destination
        self.destinationPort = udp ? destinationPort : 0
        self.hopLimit = hopLimit
        self.tunnel = tunnel
        var ip = InternetChecksum()
        ip.add(word: 0x4500)
        ip.add(word: 0x4000) // DF
        ip.add(word: UInt16(hopLimit) << 8 | proto)
        ip.add(source)
        ip.add(destination)
        var addresses = InternetChecksum()
        addresses.add(source)
        addresses.add(destination)
        addresses.add(word: proto)
        var pseudo = addresses
        pseudo.add(word: self.destinationPort)
        constants = Constants(family: family, length: (family == .ipv4 ? 20 : 40) + (udp ? 8 : 0), udp: udp,
                              ipv4Sum: ip.sum, pseudoSum: pseudo.sum, addressSum: addresses.sum)
    }

    /// Writes the constant fields; `finish` completes a copy of them.
    public func writeTemplate(to out: UnsafeMutableRawPointer) {
        out.initializeMemory(as: UInt8.self, repeating: 0, count: length)
        let udp: UnsafeMutableRawPointer
        switch family {
        case .ipv4:
            out.storeBytes(of: UInt16(0x4500).bigEndian, toByteOffset: 0, as: UInt16.self)
            out.storeBytes(of: UInt16(0x4000).bigEndian, toByteOffset: 6, as: UInt16.self)
            out.storeBytes(of: hopLimit, toByteOffset: 8, as: UInt8.self)
            out.storeBytes(of: tunnel.outerProtocol.rawValue, toByteOffset: 9, as: UInt8.self)
            source.withUnsafeBytes { (out + 12).copyMemory(from: $0.baseAddress!, byteCount: 4) }
            destination.withUnsafeBytes { (out + 16).copyMemory(from: $0.baseAddress!, byteCount: 4) }
            udp = out + 20
        case .ipv6:
            out.storeBytes(of: UInt8(0x60), toByteOffset: 0, as: UInt8.self)
            out.storeBytes(of: tunnel.outerProtocol.rawValue, toByteOffset: 6, as: UInt8.self)
            out.storeBytes(of: hopLimit, toByteOffset: 7, as: UInt8.self)
            source.withUnsafeBytes { (out + 8).copyMemory(from: $0.baseAddress!, byteCount: 16) }
            destination.withUnsafeBytes { (out + 24).copyMemory(from: $0.baseAddress!, byteCount: 16) }
            udp = out + 40
        }
        if constants.udp { udp.storeBytes(of: destinationPort.bigEndian, toByteOffset: 2, as: UInt16.self) }
    }

    /// Completes a template copy at `out` for a UDP (or GRE) payload of
    /// `payloadLength` bytes. GRE needs only the IP lengths and checksum. For IPv6 `payloadSum` must be the checksum
    /// sum of the payload (UDP checksums are mandatory there); IPv4 sends
    /// 0, as RFC 7348 recommends. `partial` leaves the UDP checksum for the
    /// kernel (or the NIC) to finish, as CHECKSUM_PARTIAL: the field holds
    /// the folded pseudo-header sum. UDP GSO needs that, since every
    /// datagram it cuts gets its own checksum.
    @inlinable @inline(__always)
    public static func finish(
        _ out: UnsafeMutableRawPointer, _ c: Constants, sourcePort: UInt16, payloadLength: Int,
        identification: UInt16, payloadSum: UInt64 = 0, partial: Bool = false
    ) {
        if !c.udp {
            let length = UInt16(truncatingIfNeeded: payloadLength)
            if c.family == .ipv4 {
                let total = length &+ 20
                out.storeBytes(of: total.bigEndian, toByteOffset: 2, as: UInt16.self)
                out.storeBytes(of: identification.bigEndian, toByteOffset: 4, as: UInt16.self)
                let check = ~fold(c.ipv4Sum &+ UInt64(total) &+ UInt64(identification))
                out.storeBytes(of: check.bigEndian, toByteOffset: 10, as: UInt16.self)
            } else {
                out.storeBytes(of: length.bigEndian, toByteOffset: 4, as: UInt16.self)
            }
            return
        }
        let udpLength = UInt16(truncatingIfNeeded: 8 + payloadLength)
        let partialSum = fold(c.addressSum &+ UInt64(udpLength))
        switch c.family {
        case .ipv4:
            let total = udpLength &+ 20
            let check = ~fold(c.ipv4Sum &+ UInt64(total) &+ UInt64(identification))
            out.storeBytes(of: total.bigEndian, toByteOffset: 2, as: UInt16.self)
            out.storeBytes(of: identification.bigEndian, toByteOffset: 4, as: UInt16.self)
            out.storeBytes(of: check.bigEndian, toByteOffset: 10, as: UInt16.self)
            out.storeBytes(of: sourcePort.bigEndian, toByteOffset: 20, as: UInt16.self)
            out.storeBytes(of: udpLength.bigEndian, toByteOffset: 24, as: UInt16.self)
            out.storeBytes(of: partial ? partialSum.bigEndian : 0, toByteOffset: 26, as: UInt16.self)
        case .ipv6:
            out.storeBytes(of: udpLength.bigEndian, toByteOffset: 4, as: UInt16.self)
            out.storeBytes(of: sourcePort.bigEndian, toByteOffset: 40, as: UInt16.self)
            out.storeBytes(of: udpLength.bigEndian, toByteOffset: 44, as: UInt16.self)
            if partial {
                out.storeBytes(of: partialSum.bigEndian, toByteOffset: 46, as: UInt16.self)
                return
            }
            // Pseudo-header length and the UDP length field both count.
            var check = ~fold(c.pseudoSum &+ UInt64(udpLength) &+ UInt64(udpLength)
                              &+ UInt64(sourcePort) &+ payloadSum)
            if check == 0 { check = 0xFFFF }
            out.storeBytes(of: check.bigEndian, toByteOffset: 46, as: UInt16.self)
        }
    }

    @inlinable @inline(__always)
    static func fold(_ sum: UInt64) -> UInt16 {
        var s = sum
        while s >> 16 != 0 { s = (s & 0xFFFF) &+ (s >> 16) }
        return UInt16(s)
    }

    /// Frame bytes that fit an outer packet of `mtu` bytes (SPEC §4.3:
    /// 1500 over IPv4 VXLAN leaves 1464).
    public func innerLimit(mtu: Int) -> Int {
        max(0, mtu - overhead)
    }

    /// The whole header for one packet, for tests and tools.
    public func bytes(sourcePort: UInt16, payloadLength: Int, identification: UInt16, payloadSum: UInt64 = 0) -> [UInt8] {
        var out = [UInt8](repeating: 0, count: length)
        out.withUnsafeMutableBytes { raw in
            writeTemplate(to: raw.baseAddress!)
            Self.finish(raw.baseAddress!, constants, sourcePort: sourcePort, payloadLength: payloadLength,
                        identification: identification, payloadSum: payloadSum)
        }
        return out
    }
}
