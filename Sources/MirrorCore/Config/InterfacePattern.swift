#if canImport(Glibc)
import Glibc
#endif

/// Interface names in a configuration are shell-style patterns (`*`, `?`,
/// `[...]`, as fnmatch(3)) or literal names. An interface of another
/// network namespace is written `NAMESPACE/INTERFACE`, NAMESPACE being a
/// name under /var/run/netns (as `ip netns` makes) or the absolute path of
/// a namespace file (`/proc/PID/ns/net`); interface names never hold a
/// '/', so the last one separates them. The namespace is always literal.
public enum InterfacePattern {
    /// Whether `text` has a wildcard (otherwise it names one interface).
    public static func isPattern(_ text: String) -> Bool {
        text.contains { $0 == "*" || $0 == "?" || $0 == "[" }
    }

    /// FNM_PATHNAME: a wildcard never crosses the '/' before an interface
    /// of another namespace.
    public static func matches(_ pattern: String, _ name: String) -> Bool {
        fnmatch(pattern, name, FNM_PATHNAME) == 0
    }

    /// The namespace part (nil: the agent's own) and the interface part.
    public static func split(_ source: String) -> (namespace: String?, interface: String) {
        guard let slash = source.lastIndex(of: "/") else { return (nil, source) }
        return (String(source[..<slash]), String(source[source.index(after: slash)...]))
    }

    /// Why `source` is not a valid interface, pattern or NAMESPACE/INTERFACE.
    public static func problem(_ source: String) -> String? {
        let (namespace, interface) = split(source)
        let longest = isPattern(interface) ? 64 : 15
        if interface.isEmpty || interface.utf8.count > longest || interface.contains(":") || interface.contains(where: \.isWhitespace) {
            return "\"\(source)\" is not an interface name (1 to 15 characters) or pattern (up to 64, with *, ? or [...]); no ':' or spaces, and '/' only after a network namespace"
        }
        if let ns = namespace {
            if ns.isEmpty || isPattern(ns) || ns.contains(where: \.isWhitespace) || (!ns.hasPrefix("/") && ns.contains("/")) {
                return "\"\(source)\": the network namespace before the '/' must be a name under /var/run/netns or an absolute path such as /proc/PID/ns/net, without wildcards"
            }
        }
        return nil
    }
}

extension MirrorConfig {
    /// Every interface pattern (or literal name) of the sessions, in
    /// first-mention order.
    public var interfacePatterns: [String] {
        var seen = Set<String>(), out = [String]()
        for s in sessions { for i in s.interfaces where seen.insert(i).inserted { out.append(i) } }
        return out
    }

    /// What each pattern matches among `links`, sorted by name.
    public func matches(in links: some Collection<String>) -> [String: [String]] {
        var out = [String: [String]]()
        for p in interfacePatterns {
            out[p] = InterfacePattern.isPattern(p) ? links.filter { InterfacePattern.matches(p, $0) }.sorted()
                : (links.contains(p) ? [p] : [])
        }
        return out
    }

    /// This configuration with each session's patterns replaced by the
    /// interfaces of `links` they match (a session whose patterns match
    /// nothing keeps no interface and hooks nothing until one appears).
    public func resolvingInterfaces(in links: some Collection<String>) -> MirrorConfig {
        let m = matches(in: links)
        var out = self
        for i in out.sessions.indices {
            var seen = Set<String>(), names = [String]()
            for p in out.sessions[i].interfaces {
                for n in m[p] ?? [] where seen.insert(n).inserted { names.append(n) }
            }
            out.sessions[i].interfaces = names
        }
        return out
    }
}
