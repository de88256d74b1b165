/// Rendezvous (highest random weight) hashing for target groups: a flow
/// goes to the up endpoint with the highest weight for its flow hash.
/// Removing an endpoint moves only the flows it had, and the flow hash is
/// symmetric, so both directions of a connection reach the same endpoint.
public enum Rendezvous {
    /// A stable seed for an endpoint, from its key (FNV-1a of HOST:PORT).
    public static func seed(_ key: String) -> UInt32 {
        var h: UInt32 = 0x811C_9DC5
        for b in key.utf8 { h = (h ^ UInt32(b)) &* 0x0100_0193 }
        return h
    }

    /// The weight of an endpoint for a flow (MurmurHash3's finalizer).
    @inline(__always)
    public static func weight(_ hash: UInt32, _ seed: UInt32) -> UInt32 {
        var h = hash ^ seed
        h ^= h >> 16
        h = h &* 0x85EB_CA6B
        h ^= h >> 13
        h = h &* 0xC2B2_AE35
        h ^= h >> 16
        return h
    }

    /// The index in `seeds` of the endpoint for `hash` among those `up`.
    public static func choose(_ hash: UInt32, seeds: [UInt32], up: [Bool]) -> Int? {
        var best: Int?
        var bestWeight: UInt32 = 0
        for (i, s) in seeds.enumerated() where up[i] {
            let w = weight(hash, s)
            if best == nil || w > bestWeight {
                best = i
                bestWeight = w
            }
        }
        return best
    }
}
