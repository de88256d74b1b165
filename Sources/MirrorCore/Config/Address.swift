/// An IPv4 or IPv6 address, parsed and printed in pure Swift (RFC 4291
/// text forms in, RFC 5952 form out).
public enum IPAddress: Hashable, Sendable, CustomStringConvertible {
    case v4([UInt8])
    case v6([UInt8])

    /// 4 or 16 bytes, network order.
    public var bytes: [UInt8] {
        switch self {
        case .v4(let b), .v6(let b): b
        }
    }

    public var isIPv4: Bool { if case .v4 = self { true } else { false } }

    public init?(_ text: some StringProtocol) {
        if let v4 = Self.parseIPv4(text) {
            self = .v4(v4)
        } else if let v6 = Self.parseIPv6(text) {
            self = .v6(v6)
        } else {
            return nil
        }
    }

    static func parseIPv4(_ text: some StringProtocol) -> [UInt8]? {
        let parts = text.split(separator: ".", omittingEmptySubsequences: false)
        guard parts.count == 4 else { return nil }
        var out = [UInt8]()
        for p in parts {
            guard !p.isEmpty, p.count <= 3, p.allSatisfy(\.isASCII), p.allSatisfy(\.isNumber),
                  let v = UInt8(p), p.count == 1 || p.first != "0" else { return nil }
            out.append(v)
        }
        return out
    }

    static func parseIPv6(_ text: some StringProtocol) -> [UInt8]? {
        var s = Substring(text)
        guard !s.isEmpty, s.count <= 45 else { return nil }
        // An embedded IPv4 tail (::ffff:198.18.0.1) becomes two groups.
        var tail: [UInt8] = []
        if let lastColon = s.lastIndex(of: ":"), s[lastColon...].contains(".") {
            guard let v4 = parseIPv4(s[s.index(after: lastColon)...]) else { return nil }
            tail = v4
            s = s[...lastColon]
            if s.hasSuffix(":") && !s.hasSuffix("::") { s = s.dropLast() }
        }
        var halves = [String]()
        if let r = s.firstRange(of: "::") {
            halves = [String(s[..<r.lowerBound]), String(s[r.upperBound...])]
            guard !halves[1].contains("::") else { return nil }
        } else {
            halves = [String(s)]
        }
        func groups(_ part: String) -> [UInt16]? {
            if part.isEmpty { return [] }
            var out = [UInt16]()
            for g in part.split(separator: ":", omittingEmptySubsequences: false) {
                guard (1...4).contains(g.count), let v = UInt16(g, radix: 16) else { return nil }
                out.append(v)
            }
            return out
        }
        guard let head = groups(halves[0]) else { return nil }
        let rest = halves.count == 2 ? groups(halves[1]) : []
        guard let back = rest else { return nil }
        let tailGroups = tail.count / 2
        let total = head.count + back.count + tailGroups
        var all: [UInt16]
        if halves.count == 2 {
            guard total < 8 else { return nil }
            all = head + [UInt16](repeating: 0, count: 8 - total) + back
        } else {
            guard total == 8 else { return nil }
            all = head
        }
        var out = [UInt8]()
        for g in all { out.append(UInt8(g >> 8)); out.append(UInt8(g & 0xFF)) }
        out += tail
        return out.count == 16 ? out : nil
    }

    public var description: String {
        switch self {
        case .v4(let b):
            return b.map(String.init).joined(separator: ".")
        case .v6(let b):
            var g = [UInt16]()
            for i in stride(from: 0, to: 16, by: 2) { g.append(UInt16(b[i]) << 8 | UInt16(b[i + 1])) }
            // RFC 5952: the longest run (>= 2) of zero groups becomes "::".
            var best = (start: -1, len: 0), i = 0
            while i < 8 {
                if g[i] == 0 {
                    var j = i
                    while j < 8 && g[j] == 0 { j += 1 }
                    if j - i > best.len { best = (i, j - i) }
                    i = j
                } else { i += 1 }
            }
            func hex(_ r: ArraySlice<UInt16>) -> String { r.map { String($0, radix: 16) }.joined(separator: ":") }
            if best.len < 2 { return hex(g[...]) }
            return hex(g[0..<best.start]) + "::" + hex(g[(best.start + best.len)...])
        }
    }
}

/// An address prefix such as 198.18.1.0/24 or fd00::/8.
public struct CIDR: Hashable, Sendable, CustomStringConvertible {
    public let address: IPAddress
    public let prefixLength: Int

    public var isIPv4: Bool { address.isIPv4 }
    public var bitCount: Int { isIPv4 ? 32 : 128 }

    /// Parses "ADDR/LEN" or a bare address (a host prefix). Host bits below
    /// the prefix are an error, like AWS: "198.18.1.1/24" is ambiguous.
    public init(parsing text: String) throws(CIDRError) {
        let parts = text.split(separator: "/", omittingEmptySubsequences: false)
        guard parts.count <= 2, let addr = IPAddress(parts[0]) else {
            throw .invalid("\"\(text)\" is not an IPv4 or IPv6 CIDR (e.g. 198.18.1.0/24 or fd00::/8)")
        }
        let max = addr.isIPv4 ? 32 : 128
        var len = max
        if parts.count == 2 {
            guard let l = Int(parts[1]), (0...max).contains(l), parts[1].allSatisfy(\.isNumber) else {
                throw .invalid("\"\(text)\": prefix length must be 0...\(max)")
            }
            len = l
        }
        let b = addr.bytes
        for bit in len..<max where b[bit / 8] & (0x80 >> UInt8(bit % 8)) != 0 {
            throw .invalid("\"\(text)\" has host bits set below /\(len); did you mean \(CIDR(address: addr, prefixLength: len).masked)?")
        }
        address = addr
        prefixLength = len
    }

    public init(address: IPAddress, prefixLength: Int) {
        self.address = address
        self.prefixLength = prefixLength
    }

    /// The network with host bits cleared.
    public var masked: CIDR {
        var b = address.bytes
        for bit in prefixLength..<(b.count * 8) { b[bit / 8] &= ~(0x80 >> UInt8(bit % 8)) }
        return CIDR(address: isIPv4 ? .v4(b) : .v6(b), prefixLength: prefixLength)
    }

    public func contains(_ bytes: [UInt8]) -> Bool {
        let mine = address.bytes
        guard bytes.count >= mine.count else { return false }
        var bit = 0
        while bit < prefixLength {
            let byte = bit / 8
            if prefixLength - bit >= 8 {
                if mine[byte] != bytes[byte] { return false }
                bit += 8
            } else {
                let mask = UInt8(0xFF) << UInt8(8 - (prefixLength - bit))
                return mine[byte] & mask == bytes[byte] & mask
            }
        }
        return true
    }

    public var description: String { "\(address)/\(prefixLength)" }
}

public enum CIDRError: Error, Equatable {
    case invalid(String)

    public var message: String {
        switch self {
        case .invalid(let m): m
        }
    }
}

/// HOST[:PORT] as the flags take it: an IPv4 address, an IPv6 address in
/// brackets ([fd00::2]:4789), or a host name.
public struct HostPort: Equatable, Sendable, CustomStringConvertible {
    public var host: String
    public var port: UInt16?

    public init(host: String, port: UInt16?) {
        self.host = host
        self.port = port
    }

    /// Parses the text; the error says what is wrong and how to write it.
    public init(parsing text: String) throws(HostPortError) {
        func portValue(_ s: Substring) throws(HostPortError) -> UInt16 {
            guard let p = UInt16(s), p > 0, s.allSatisfy(\.isNumber) else {
                throw HostPortError("\"\(text)\": port must be 1...65535")
            }
            return p
        }
        if text.hasPrefix("[") {
            guard let close = text.firstIndex(of: "]") else {
                throw HostPortError("\"\(text)\": missing ']' after the IPv6 address")
            }
            let inner = text[text.index(after: text.startIndex)..<close]
            guard IPAddress.parseIPv6(inner) != nil else {
                throw HostPortError("\"\(text)\": \"\(inner)\" is not an IPv6 address")
            }
            let rest = text[text.index(after: close)...]
            host = String(inner)
            if rest.isEmpty {
                port = nil
            } else {
                guard rest.hasPrefix(":") else { throw HostPortError("\"\(text)\": expected ':PORT' after ']'") }
                port = try portValue(rest.dropFirst())
            }
            return
        }
        let colons = text.filter { $0 == ":" }.count
        if colons >= 2 {
            guard IPAddress.parseIPv6(text) != nil else {
                throw HostPortError("\"\(text)\" is not a host, IPv4 address or IPv6 address")
            }
            host = text
            port = nil
            return
        }
        if colons == 1, let c = text.lastIndex(of: ":") {
            host = String(text[..<c])
            port = try portValue(text[text.index(after: c)...])
        } else {
            host = text
            port = nil
        }
        guard !host.isEmpty, host.allSatisfy({ $0.isLetter || $0.isNumber || $0 == "." || $0 == "-" || $0 == "_" }) else {
            throw HostPortError("\"\(text)\": expected HOST[:PORT] with an IPv4 address, [IPv6] in brackets, or a host name")
        }
    }

    public var description: String {
        let h = host.contains(":") ? "[\(host)]" : host
        return port.map { "\(h):\($0)" } ?? h
    }
}

public struct HostPortError: Error, Equatable, CustomStringConvertible {
    public var message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}
