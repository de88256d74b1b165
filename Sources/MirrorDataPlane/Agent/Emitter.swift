import CMirrorSys
import MirrorCore

#if canImport(Glibc)
import Glibc
#endif

/// Sends the copies the forwarder builds, as cheaply as the kernel allows,
/// without binding a port.
///
/// A copy is a descriptor: an endpoint, its flow (hash and the UDP source
/// port the hash gives) and payload pieces (tunnel header and frame, in the
/// ring or in scratch). At a flush, copies of one flow to one endpoint with
/// the same length are joined into runs, in order. An endpoint with a
/// link-layer path (`LinkPaths`) gets whole frames from an AF_PACKET socket
/// on the path's interface, all of a flush in one sendmmsg: a run of two or
/// more as one UDP GSO message (a virtio-net header asks the kernel to cut
/// it into datagrams, each with its UDP checksum), a single copy as one
/// frame. Other endpoints get their copies from the raw IP socket of their
/// family, many per sendmmsg. The copies of one flow keep their order; only
/// copies of different flows may pass each other.
///
/// Owned by the forwarding thread; nothing here allocates after init,
/// except opening the packet socket of an interface the first time.
final class Emitter {
    struct Descriptor {
        var endpoint: Int32
        var port: UInt16
        var hash: UInt32
        /// Payload bytes: tunnel header and frame.
        var length: Int32
        var piecesStart: Int32
        var pieces: Int32
        var group: Int32
        /// The next descriptor of the same run, or -1.
        var next: Int32
    }

    struct Run {
        var first: Int32
        var last: Int32
        var count: Int32
        var length: Int32
        var bytes: Int32
        var open: Bool
    }

    /// One mirrored packet (record, or segment of one): sent when any of its
    /// copies went. Carries what per-packet tunnel headers need.
    struct Group {
        var pair: Int32
        var slot: Int32
        var sent: Bool
        var failure: UserDropReason
        var origin: Origin
        var vni: UInt32
        var erspanSessionID: UInt16
        /// The session's first GRE sequence slot in the table, or -1, and
        /// its target's first endpoint.
        var sequences: Int32
        var firstEndpoint: Int32
    }

    /// Where and when the hook saw a packet, for per-packet tunnel headers.
    struct Origin {
        /// Nanoseconds since the epoch.
        var timestamp: UInt64
        var ifindex: UInt32
        var egress: Bool
        var truncated: Bool
        /// The frame's VLAN ID, or -1 when untagged.
        var vlan: Int32
        var cos: UInt8

        static let none = Origin(timestamp: 0, ifindex: 0, egress: false, truncated: false, vlan: -1, cos: 0)
    }

    /// Copies in one flush, and the scratch each packet may use.
    let capacity: Int
    static let scratchPerPacket = 64 + GSOSegmenter.maxHeaderLength
    /// Outer headers, one slot per descriptor: Ethernet (14) and IP/UDP
    /// (at most 48) for a packet-socket frame, IP/UDP for a raw one.
    static let outerSlot = 64
    /// The kernel's limit of segments in one UDP GSO message.
    static let maxSegments = 64
    static let maxGSOBytes = 64_000
    /// Payload pieces of one packet: runs of the ring around a finished
    /// checksum and a mask, or a segment's tunnel header, headers and
    /// payload around a mask.
    static let maxPieces = 5
    /// iovecs of a single copy: outer header, tunnel header, the pieces.
    static let iovPerSingle = 2 + maxPieces
    /// Interfaces toward targets that the agent keeps a packet socket on.
    static let maxPacketSockets = 32

    let counters: ForwarderCounters
    let settings: Forwarder.Settings
    let socket4: Int32
    let socket6: Int32
    let mark: UInt32
    let own: OwnOutput

    private var table: ForwardingTable?
    private let descriptors: UnsafeMutablePointer<Descriptor>
    private let pieces: UnsafeMutablePointer<iovec>
    let scratch: UnsafeMutableRawPointer
    private let outer: UnsafeMutableRawPointer
    /// Per-copy tunnel headers (GENEVE with options, ERSPAN), one slot of
    /// Tunnel.maxHeaderLength per descriptor.
    private let tunnels: UnsafeMutableRawPointer
    private let groups: UnsafeMutablePointer<Group>
    private let runs: UnsafeMutablePointer<Run>
    /// Open runs by (endpoint, flow hash): a small open-addressing table whose
    /// entries are valid only when their generation is the current one.
    private let runKeys: UnsafeMutablePointer<UInt64>
    private let runIndex: UnsafeMutablePointer<Int32>
    private let runGeneration: UnsafeMutablePointer<UInt32>
    private let tableSize: Int
    private var generation: UInt32 = 1
    private let msgIov: UnsafeMutablePointer<iovec>
    private let msgs4: UnsafeMutablePointer<CMirrorSys_mmsghdr>
    private let msgs6: UnsafeMutablePointer<CMirrorSys_mmsghdr>
    /// Descriptor of each pending single message.
    private let meta4: UnsafeMutablePointer<Int32>
    private let meta6: UnsafeMutablePointer<Int32>

    /// Packet-socket frames of a flush: message, its packet socket (index
    /// in `packetSockets`), its first descriptor and how many it carries,
    /// its virtio-net header; iovecs for all of them.
    private let frames: UnsafeMutablePointer<CMirrorSys_mmsghdr>
    private let frameSocket: UnsafeMutablePointer<Int32>
    private let frameFirst: UnsafeMutablePointer<Int32>
    private let frameCount: UnsafeMutablePointer<Int32>
    private let vnet: UnsafeMutablePointer<CMirrorSys_vnet_hdr>
    private let frameIov: UnsafeMutablePointer<iovec>
    /// One socket's frames, gathered for its sendmmsg.
    private let sending: UnsafeMutablePointer<CMirrorSys_mmsghdr>
    private let sendingFrame: UnsafeMutablePointer<Int32>
    private var frameTotal = 0
    private var frameIovUsed = 0

    struct PacketSocket {
        var ifindex: Int32
        var fd: Int32
    }
    private let packetSockets: UnsafeMutablePointer<PacketSocket>
    private var packetSocketCount = 0
    /// sockaddr_ll of each packet socket for IPv4 and IPv6 frames.
    private let linkAddresses: UnsafeMutablePointer<sockaddr_ll>

    private(set) var descriptorCount = 0
    private var piecesUsed = 0
    private var packets = 0
    private var runCount = 0
    private var n4 = 0, n6 = 0
    private var identification: UInt16 = 0
    /// When the current flush stops waiting for a full socket (0: it has
    /// not waited yet): one back-pressure budget per flush, however many
    /// sends it takes.
    private var deadline: UInt64 = 0
    var lastSendError: Int32 = 0
    var sendErrorsSinceLog = 0

    init(capacity: Int, counters: ForwarderCounters, settings: Forwarder.Settings, socket4: Int32, socket6: Int32, mark: UInt32, own: OwnOutput) {
        self.capacity = capacity
        self.counters = counters
        self.settings = settings
        self.socket4 = socket4
        self.socket6 = socket6
        self.mark = mark
        self.own = own
        descriptors = .allocate(capacity: capacity)
        pieces = .allocate(capacity: capacity * Self.maxPieces)
        scratch = .allocate(byteCount: capacity * Self.scratchPerPacket, alignment: 16)
        outer = .allocate(byteCount: capacity * Self.outerSlot, alignment: 16)
        tunnels = .allocate(byteCount: capacity * Tunnel.maxHeaderLength, alignment: 16)
        groups = .allocate(capacity: capacity)
        runs = .allocate(capacity: capacity)
        tableSize = capacity * 2
        runKeys = .allocate(capacity: tableSize)
        runIndex = .allocate(capacity: tableSize)
        runGeneration = .allocate(capacity: tableSize)
        runGeneration.initialize(repeating: 0, count: tableSize)
        msgIov = .allocate(capacity: capacity * Self.iovPerSingle)
        msgs4 = .allocate(capacity: capacity)
        msgs6 = .allocate(capacity: capacity)
        msgs4.initialize(repeating: CMirrorSys_mmsghdr(), count: capacity)
        msgs6.initialize(repeating: CMirrorSys_mmsghdr(), count: capacity)
        meta4 = .allocate(capacity: capacity)
        meta6 = .allocate(capacity: capacity)
        frames = .allocate(capacity: capacity)
        frames.initialize(repeating: CMirrorSys_mmsghdr(), count: capacity)
        frameSocket = .allocate(capacity: capacity)
        frameFirst = .allocate(capacity: capacity)
        frameCount = .allocate(capacity: capacity)
        vnet = .allocate(capacity: capacity)
        // Per frame: virtio-net and outer headers; per copy: its tunnel
        // header and its pieces.
        frameIov = .allocate(capacity: capacity * (3 + Self.maxPieces))
        sending = .allocate(capacity: capacity)
        sending.initialize(repeating: CMirrorSys_mmsghdr(), count: capacity)
        sendingFrame = .allocate(capacity: capacity)
        packetSockets = .allocate(capacity: Self.maxPacketSockets)
        linkAddresses = .allocate(capacity: 2 * Self.maxPacketSockets)
    }

    deinit {
        for i in 0..<packetSocketCount where packetSockets[i].fd >= 0 {
            own.forget(packetSockets[i].fd)
            _ = CMirrorSys_close(packetSockets[i].fd)
        }
        descriptors.deallocate(); pieces.deallocate(); scratch.deallocate(); outer.deallocate(); tunnels.deallocate()
        groups.deallocate(); runs.deallocate(); runKeys.deallocate(); runIndex.deallocate(); runGeneration.deallocate()
        msgIov.deallocate(); msgs4.deallocate(); msgs6.deallocate(); meta4.deallocate(); meta6.deallocate()
        frames.deallocate(); frameSocket.deallocate(); frameFirst.deallocate(); frameCount.deallocate(); vnet.deallocate()
        frameIov.deallocate(); sending.deallocate(); sendingFrame.deallocate(); packetSockets.deallocate(); linkAddresses.deallocate()
    }

    /// Packet sockets open now (one per interface toward targets).
    var packetSocketsOpen: Int { packetSocketCount }

    // MARK: building

    /// Makes room for one packet of `copies` copies; returns the packet's
    /// scratch and its (up to maxPieces) payload pieces to fill.
    @inline(__always)
    func beginPacket(copies: Int, table t: ForwardingTable) -> (scratch: UnsafeMutableRawPointer, pieces: UnsafeMutablePointer<iovec>) {
        if descriptorCount + copies > capacity || piecesUsed + Self.maxPieces > capacity * Self.maxPieces { flush() }
        // Assigned only on a change: a store would retain and release the
        // table once per packet.
        if table !== t {
            flush()
            table = t
        }
        return (scratch + packets * Self.scratchPerPacket, pieces + piecesUsed)
    }

    /// Adds the packet begun last: one group, and a copy for each of
    /// `endpoints[0..<copies]`. `length` counts the ring's tunnel header,
    /// which the pieces start with; a target whose copies get headers of
    /// their own (`Tunnel.perPacket`) skips it.
    @inline(__always)
    func addPacket(_ s: ForwardingTable.SessionInfo, endpoints: UnsafePointer<Int32>, copies: Int, pieces n: Int,
                   length: Int, hash: UInt32, origin: Origin) {
        guard let table else { return }
        let target = table.targetInfo[Int(s.target)]
        var length = length
        if target.tunnel.perPacket {
            let first = pieces + piecesUsed
            first.pointee.iov_base = first.pointee.iov_base.map { $0 + TunnelHeader.length }
            first.pointee.iov_len -= TunnelHeader.length
            length += target.tunnel.headerLength - TunnelHeader.length
        }
        groups[packets] = Group(pair: s.pair, slot: s.slot, sent: false, failure: .sendFailed, origin: origin,
                                vni: s.vni, erspanSessionID: s.erspanSessionID, sequences: s.sequences,
                                firstEndpoint: target.first)
        let port = FlowHash.sourcePort(for: hash)
        for c in 0..<copies {
            descriptors[descriptorCount] = Descriptor(
                endpoint: endpoints[c], port: port, hash: hash, length: Int32(length), piecesStart: Int32(piecesUsed),
                pieces: Int32(n), group: Int32(packets), next: -1)
            descriptorCount += 1
        }
        piecesUsed += n
        packets += 1
    }

    /// Writes copy `d`'s own tunnel header and returns it as an iovec;
    /// a zero-length one for tunnels whose header is in the ring.
    @inline(__always)
    private func tunnelHeader(_ table: ForwardingTable, _ d: Int, _ ep: ForwardingTable.EndpointInfo) -> iovec {
        let tunnel = ep.tunnel
        let h = tunnels + d * Tunnel.maxHeaderLength
        guard tunnel.perPacket else { return iovec(iov_base: h, iov_len: 0) }
        let desc = descriptors[d]
        let g = groups[Int(desc.group)]
        var f = Tunnel.Fields()
        f.vni = g.vni
        f.sessionID = g.erspanSessionID
        if g.sequences >= 0 {
            let slot = table.sequenceSlots[Int(g.sequences) + Int(desc.endpoint - g.firstEndpoint)]
            f.sequence = counters.nextSequence(Int(slot))
        }
        f.timestamp = g.origin.timestamp
        f.ifindex = g.origin.ifindex
        f.egress = g.origin.egress
        f.truncated = g.origin.truncated
        f.vlan = g.origin.vlan >= 0 ? UInt16(g.origin.vlan) : nil
        f.cos = g.origin.cos
        tunnel.write(f, to: h)
        return iovec(iov_base: h, iov_len: tunnel.headerLength)
    }

    // MARK: sending

    /// Sends everything built, then counts each packet once. Runs toward
    /// unpaced endpoints go together, as few sendmmsg calls as there are
    /// sockets; each run toward a paced endpoint goes by itself, once the
    /// endpoint's schedule has room for it (the thread sleeps until then,
    /// and the rings hold what comes meanwhile).
    func flush() {
        guard descriptorCount > 0, let table else { return }
        deadline = 0
        formRuns(table)
        var paced = 0
        for r in 0..<runCount {
            let run = runs[r]
            if table.endpointInfo[Int(descriptors[Int(run.first)].endpoint)].pacingInterval != 0 {
                paced += 1
            } else {
                addRun(table, run)
            }
        }
        sendQueued(table)
        if paced > 0 {
            for r in 0..<runCount {
                let run = runs[r]
                let ep = table.endpointInfo[Int(descriptors[Int(run.first)].endpoint)]
                guard ep.pacingInterval != 0 else { continue }
                // Built first (the first send opens the packet socket), so
                // the schedule is booked right before the send.
                addRun(table, run)
                let now = CMirrorSys_monotonic_ns()
                let wait = counters.pace(endpoint: Int(ep.counter), datagrams: Int(run.count), interval: ep.pacingInterval,
                                         burst: Int(ep.pacingBurst), now: now)
                if wait > 0 {
                    CMirrorSys_sleep_until(now + wait)
                    let start = CMirrorSys_monotonic_ns()
                    counters.addPacingWait(endpoint: Int(ep.counter), nanoseconds: start - now)
                    // Woken late (a busy CPU): the next run keeps its distance.
                    if start > now + wait + 10_000 {
                        counters.paceLate(endpoint: Int(ep.counter), datagrams: Int(run.count), interval: ep.pacingInterval, start: start)
                    }
                    // A full socket's budget starts after the pacing.
                    deadline = 0
                }
                sendQueued(table)
            }
        }
        for i in 0..<packets {
            let grp = groups[i]
            if grp.sent {
                counters.addSentPacket(pair: Int(grp.pair))
            } else {
                counters.addDrop(session: Int(grp.slot), grp.failure)
            }
        }
        descriptorCount = 0
        piecesUsed = 0
        packets = 0
        runCount = 0
        generation &+= 1
        if generation == 0 {
            runGeneration.update(repeating: 0, count: tableSize)
            generation = 1
        }
    }

    /// Queues a run's copies: as frames of the packet socket on its path's
    /// interface, or for the raw socket where there is none, or where the
    /// path has moved to an interface the header was not made for (a
    /// failover the agent has not put in force yet: the kernel then fills
    /// in the source).
    @inline(__always)
    private func addRun(_ table: ForwardingTable, _ run: Run) {
        let e = Int(descriptors[Int(run.first)].endpoint)
        let ep = table.endpointInfo[e]
        if let path = LinkPaths.read(table.paths, Int(ep.path)), ep.interface == 0 || path.ifindex == ep.interface,
           let socket = packetSocket(path.ifindex) {
            addFrames(table, run, socket: socket, path: path)
        } else {
            var d = Int(run.first)
            while d >= 0 {
                addSingle(table, d)
                d = Int(descriptors[d].next)
            }
        }
    }

    /// Sends what is queued (frames, then singles) and empties the queues.
    @inline(__always)
    private func sendQueued(_ table: ForwardingTable) {
        sendFrames(table)
        sendSingles(table)
        frameTotal = 0
        frameIovUsed = 0
    }

    /// Joins copies into runs: same endpoint and flow, equal lengths (the
    /// last may be shorter), in order, within the GSO limits and the
    /// endpoint's pacing burst.
    private func formRuns(_ table: ForwardingTable) {
        for d in 0..<descriptorCount {
            let desc = descriptors[d]
            let key = UInt64(UInt32(bitPattern: desc.endpoint)) << 32 | UInt64(desc.hash)
            var slot = Int(truncatingIfNeeded: (key &* 0x9E37_79B9_7F4A_7C15) >> 40) % tableSize
            while runGeneration[slot] == generation && runKeys[slot] != key { slot = slot + 1 == tableSize ? 0 : slot + 1 }
            if runGeneration[slot] == generation {
                let r = Int(runIndex[slot])
                var run = runs[r]
                if run.open && run.count < min(Int32(Self.maxSegments), table.endpointInfo[Int(desc.endpoint)].pacingBurst)
                    && desc.length <= run.length
                    && Int(run.bytes) + Int(desc.length) <= Self.maxGSOBytes {
                    descriptors[Int(run.last)].next = Int32(d)
                    run.last = Int32(d)
                    run.count += 1
                    run.bytes += desc.length
                    // Only the last segment may be shorter.
                    if desc.length < run.length { run.open = false }
                    runs[r] = run
                    continue
                }
            }
            runs[runCount] = Run(first: Int32(d), last: Int32(d), count: 1, length: desc.length, bytes: desc.length, open: true)
            runGeneration[slot] = generation
            runKeys[slot] = key
            runIndex[slot] = Int32(runCount)
            runCount += 1
        }
    }

    /// Queues one copy for its family's raw socket, with an outer header
    /// from the endpoint's template.
    @inline(__always)
    private func addSingle(_ table: ForwardingTable, _ d: Int) {
        let desc = descriptors[d]
        let e = Int(desc.endpoint)
        let ep = table.endpointInfo[e]
        if (ep.ipv6 ? n6 : n4) == capacity { sendSingles(table) }
        let h = outer + d * Self.outerSlot
        h.copyMemory(from: table.templates + e * 64, byteCount: ep.constants.length)
        let tunnel = tunnelHeader(table, d, ep)
        var sum: UInt64 = 0
        if ep.ipv6 && ep.constants.udp {
            var c = InternetChecksum()
            c.add(UnsafeRawBufferPointer(start: tunnel.iov_base, count: tunnel.iov_len))
            for p in 0..<Int(desc.pieces) {
                let piece = pieces[Int(desc.piecesStart) + p]
                c.add(UnsafeRawBufferPointer(start: piece.iov_base, count: piece.iov_len))
            }
            sum = c.sum
        }
        identification &+= 1
        OuterHeader.finish(h, ep.constants, sourcePort: desc.port, payloadLength: Int(desc.length),
                           identification: identification, payloadSum: sum)
        // IPv4 through the stack: a zero source is the route's preferred
        // one, filled in by the kernel (raw_send_hdrinc, which also redoes
        // the header checksum), so a copy sent while the path is changing
        // never carries an address the host no longer has. Nothing else in
        // the copy depends on it (the UDP checksum is 0). IPv6 keeps the
        // template's: its UDP checksum covers the source.
        if !ep.ipv6 { h.storeBytes(of: UInt32(0), toByteOffset: 12, as: UInt32.self) }
        let v = msgIov + d * Self.iovPerSingle
        v[0] = iovec(iov_base: h, iov_len: ep.constants.length)
        v[1] = tunnel
        for p in 0..<Int(desc.pieces) { v[2 + p] = pieces[Int(desc.piecesStart) + p] }
        var hdr = msghdr()
        hdr.msg_name = UnsafeMutableRawPointer(table.addresses + e)
        hdr.msg_namelen = ep.addressLength
        hdr.msg_iov = v
        hdr.msg_iovlen = Int(desc.pieces) + 2
        if ep.ipv6 {
            msgs6[n6] = CMirrorSys_mmsghdr(msg_hdr: hdr, msg_len: 0)
            meta6[n6] = Int32(d)
            n6 += 1
        } else {
            msgs4[n4] = CMirrorSys_mmsghdr(msg_hdr: hdr, msg_len: 0)
            meta4[n4] = Int32(d)
            n4 += 1
        }
    }

    private func sendSingles(_ table: ForwardingTable) {
        if n4 > 0 { sendSingles(socket4, msgs4, meta4, n4, table) }
        if n6 > 0 { sendSingles(socket6, msgs6, meta6, n6, table) }
        n4 = 0
        n6 = 0
    }

    /// sendmmsg, resubmitting after partial sends. A full socket gets a
    /// bounded wait; what is unsent when the budget is spent fails with
    /// backpressure, so the drain never blocks for long.
    private func sendSingles(_ fd: Int32, _ msgs: UnsafeMutablePointer<CMirrorSys_mmsghdr>, _ meta: UnsafeMutablePointer<Int32>,
                             _ count: Int, _ table: ForwardingTable) {
        var i = 0
        while i < count {
            let r = CMirrorSys_sendmmsg(fd, msgs + i, UInt32(count - i), Int32(MSG_DONTWAIT))
            if r > 0 {
                for j in i..<(i + Int(r)) { sent(table, Int(meta[j])) }
                i += Int(r)
                continue
            }
            let err = -r
            if err == EAGAIN || err == ENOBUFS {
                if waitWritable(fd) { continue }
                for j in i..<count { failed(table, Int(meta[j]), .backpressure) }
                return
            }
            if err == EINTR { continue }
            // This message cannot go (EMSGSIZE, EHOSTUNREACH, ...): note it
            // and go on with the next.
            failed(table, Int(meta[i]), .sendFailed)
            lastSendError = err
            sendErrorsSinceLog += 1
            i += 1
        }
    }

    // MARK: packet-socket frames

    /// Frames for a run toward an endpoint with a link-layer path: one UDP
    /// GSO message for a run of two or more (unless GSO is off), else one
    /// frame per copy.
    private func addFrames(_ table: ForwardingTable, _ run: Run, socket: Int, path: LinkPaths.Path) {
        // GRE has no GSO a packet socket can ask for: ERSPAN goes copy by copy.
        if run.count >= 2 && settings.gso && table.endpointInfo[Int(descriptors[Int(run.first)].endpoint)].constants.udp {
            addFrame(table, first: Int(run.first), count: Int(run.count), segment: Int(run.length), bytes: Int(run.bytes),
                     socket: socket, path: path)
            return
        }
        var d = Int(run.first)
        while d >= 0 {
            let length = Int(descriptors[d].length)
            addFrame(table, first: d, count: 1, segment: length, bytes: length, socket: socket, path: path)
            d = Int(descriptors[d].next)
        }
    }

    /// One frame (or GSO message) of `count` copies from descriptor `first`
    /// on, `bytes` of payload in all, cut every `segment` bytes.
    @inline(__always)
    private func addFrame(_ table: ForwardingTable, first: Int, count: Int, segment: Int, bytes: Int, socket: Int,
                          path: LinkPaths.Path) {
        let desc = descriptors[first]
        let e = Int(desc.endpoint)
        let ep = table.endpointInfo[e]
        let h = outer + first * Self.outerSlot
        // Ethernet: destination, source, type.
        for i in 0..<6 {
            h.storeBytes(of: UInt8(truncatingIfNeeded: path.destination >> (8 * UInt64(i))), toByteOffset: i, as: UInt8.self)
            h.storeBytes(of: UInt8(truncatingIfNeeded: path.source >> (8 * UInt64(i))), toByteOffset: 6 + i, as: UInt8.self)
        }
        h.storeBytes(of: (ep.ipv6 ? UInt16(0x86DD) : UInt16(0x0800)).bigEndian, toByteOffset: 12, as: UInt16.self)
        let ip = h + 14
        ip.copyMemory(from: table.templates + e * 64, byteCount: ep.constants.length)
        identification &+= 1
        var v = CMirrorSys_vnet_hdr()
        if ep.constants.udp && (count >= 2 || ep.ipv6) {
            // The kernel finishes the UDP checksum of every datagram (GSO
            // needs one; IPv6 always has one).
            OuterHeader.finish(ip, ep.constants, sourcePort: desc.port, payloadLength: bytes, identification: identification,
                               partial: true)
            v.flags = 1 // VIRTIO_NET_HDR_F_NEEDS_CSUM
            v.csum_start = UInt16(14 + ep.constants.length - 8)
            v.csum_offset = 6
            if count >= 2 {
                v.gso_type = 5 // VIRTIO_NET_HDR_GSO_UDP_L4
                v.gso_size = UInt16(segment)
                v.hdr_len = UInt16(14 + ep.constants.length)
            }
        } else {
            OuterHeader.finish(ip, ep.constants, sourcePort: desc.port, payloadLength: bytes, identification: identification)
        }
        identification &+= UInt16(truncatingIfNeeded: count - 1)
        let m = frameTotal
        vnet[m] = v
        let iov = frameIov + frameIovUsed
        iov[0] = iovec(iov_base: UnsafeMutableRawPointer(vnet + m), iov_len: MemoryLayout<CMirrorSys_vnet_hdr>.size)
        iov[1] = iovec(iov_base: h, iov_len: 14 + ep.constants.length)
        var n = 2
        var d = first
        for _ in 0..<count {
            let dd = descriptors[d]
            let tunnel = tunnelHeader(table, d, ep)
            if tunnel.iov_len > 0 {
                iov[n] = tunnel
                n += 1
            }
            for p in 0..<Int(dd.pieces) {
                iov[n] = pieces[Int(dd.piecesStart) + p]
                n += 1
            }
            d = Int(dd.next)
        }
        frameIovUsed += n
        var hdr = msghdr()
        hdr.msg_name = UnsafeMutableRawPointer(linkAddresses + 2 * socket + (ep.ipv6 ? 1 : 0))
        hdr.msg_namelen = socklen_t(MemoryLayout<sockaddr_ll>.size)
        hdr.msg_iov = iov
        hdr.msg_iovlen = n
        frames[m] = CMirrorSys_mmsghdr(msg_hdr: hdr, msg_len: 0)
        frameSocket[m] = Int32(socket)
        frameFirst[m] = Int32(first)
        frameCount[m] = Int32(count)
        frameTotal += 1
    }

    /// Every packet socket's frames, one sendmmsg per socket (resubmitting
    /// after partial sends). A GSO message the kernel refuses as such (EIO,
    /// EINVAL) goes again as single copies by the raw socket.
    private func sendFrames(_ table: ForwardingTable) {
        guard frameTotal > 0 else { return }
        for s in 0..<packetSocketCount {
            var count = 0
            for m in 0..<frameTotal where frameSocket[m] == Int32(s) {
                sending[count] = frames[m]
                sendingFrame[count] = Int32(m)
                count += 1
            }
            guard count > 0 else { continue }
            let fd = packetSockets[s].fd
            var i = 0
            while i < count {
                let r = CMirrorSys_sendmmsg(fd, sending + i, UInt32(count - i), Int32(MSG_DONTWAIT))
                if r > 0 {
                    for j in i..<(i + Int(r)) { frameDone(table, Int(sendingFrame[j]), sent: true, .sendFailed) }
                    i += Int(r)
                    continue
                }
                let err = -r
                if err == EINTR { continue }
                if err == EAGAIN || err == ENOBUFS {
                    if waitWritable(fd) { continue }
                    for j in i..<count { frameDone(table, Int(sendingFrame[j]), sent: false, .backpressure) }
                    break
                }
                let m = Int(sendingFrame[i])
                if (err == EIO || err == EINVAL) && frameCount[m] > 1 {
                    counters.addGSOFallback()
                    var d = Int(frameFirst[m])
                    for _ in 0..<Int(frameCount[m]) {
                        addSingle(table, d)
                        d = Int(descriptors[d].next)
                    }
                } else {
                    frameDone(table, m, sent: false, .sendFailed)
                    lastSendError = err
                    sendErrorsSinceLog += 1
                }
                i += 1
            }
        }
    }

    @inline(__always)
    private func frameDone(_ table: ForwardingTable, _ m: Int, sent ok: Bool, _ reason: UserDropReason) {
        var d = Int(frameFirst[m])
        for _ in 0..<Int(frameCount[m]) {
            if ok { sent(table, d) } else { failed(table, d, reason) }
            d = Int(descriptors[d].next)
        }
    }

    /// The index of the packet socket on `ifindex`, opened (and registered
    /// as the agent's own) the first time; nil when it cannot be had, and
    /// then the copies go by the raw IP socket.
    @inline(__always)
    private func packetSocket(_ ifindex: Int32) -> Int? {
        for i in 0..<packetSocketCount where packetSockets[i].ifindex == ifindex {
            return packetSockets[i].fd >= 0 ? i : nil
        }
        guard packetSocketCount < Self.maxPacketSockets else { return nil }
        var fd = CMirrorSys_packet_socket(ifindex)
        if fd >= 0 {
            if CMirrorSys_setsockopt_int(fd, SOL_SOCKET, SO_SNDBUFFORCE, 8 << 20) != 0 {
                _ = CMirrorSys_setsockopt_int(fd, SOL_SOCKET, SO_SNDBUF, 8 << 20)
            }
            if mark != 0 { _ = CMirrorSys_setsockopt_int(fd, SOL_SOCKET, SO_MARK, Int32(bitPattern: mark)) }
            if (try? own.register(fd)) == nil {
                _ = CMirrorSys_close(fd)
                fd = -1
            }
        }
        let i = packetSocketCount
        packetSockets[i] = PacketSocket(ifindex: ifindex, fd: fd)
        for (k, type) in [(0, UInt16(0x0800)), (1, UInt16(0x86DD))] {
            var sll = sockaddr_ll()
            sll.sll_family = UInt16(AF_PACKET)
            sll.sll_protocol = type.bigEndian
            sll.sll_ifindex = ifindex
            linkAddresses[2 * i + k] = sll
        }
        packetSocketCount += 1
        return fd >= 0 ? i : nil
    }

    /// Waits up to the backpressure budget (from the flush's first wait)
    /// for room.
    @inline(__always)
    private func waitWritable(_ fd: Int32) -> Bool {
        let now = CMirrorSys_monotonic_ns()
        if deadline == 0 { deadline = now + settings.backpressureBudgetNanoseconds }
        if now >= deadline {
            counters.addBackpressureWait(nanoseconds: 0)
            return false
        }
        _ = CMirrorSys_poll1(fd, Int16(POLLOUT), 1)
        counters.addBackpressureWait(nanoseconds: CMirrorSys_monotonic_ns() - now)
        return true
    }

    /// Copy `d` went: its outer IP packet's bytes count.
    @inline(__always)
    private func sent(_ table: ForwardingTable, _ d: Int) {
        let desc = descriptors[d]
        let ep = table.endpointInfo[Int(desc.endpoint)]
        groups[Int(desc.group)].sent = true
        counters.addSentBytes(pair: Int(groups[Int(desc.group)].pair), endpoint: Int(ep.counter),
                              bytes: ep.constants.length + Int(desc.length))
    }

    @inline(__always)
    private func failed(_ table: ForwardingTable, _ d: Int, _ reason: UserDropReason) {
        let desc = descriptors[d]
        groups[Int(desc.group)].failure = reason
        counters.addEndpointError(endpoint: Int(table.endpointInfo[Int(desc.endpoint)].counter))
    }
}
