#if canImport(Glibc)
import Glibc
#endif

/// Interface names in a configuration are shell-style patterns (`*`, `?`,
/// `[...]`, as fnmatch(3) without flags) or literal names.
public enum InterfacePattern {
    /// Whether `text` has a wildcard (otherwise it names one interface).
    public static func isPattern(_ text: String) -> Bool {
        text.contains { $0 == "*" || $0 == "?" || $0 == "[" }
    }

    public static func matches(_ pattern: String, _ name: String) -> Bool {
        fnmatch(pattern, name, 0) == 0
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
