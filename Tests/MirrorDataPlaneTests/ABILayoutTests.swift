import CMirrorBPF
import MirrorCore
import Testing

/// The Swift side reads kernel structs without C in MirrorCore; these hold
/// every offset and limit it assumes to the one C header (bpf/tm_abi.h).
@Suite("ABI layout")
struct ABILayoutTests {
    @Test("tm_record offsets match RecordLayout")
    func record() {
        typealias R = tm_record
        #expect(MemoryLayout<R>.size == RecordLayout.headerLength)
        #expect(Int(TM_RECORD_HDR_LEN) == RecordLayout.headerLength)
        #expect(MemoryLayout<R>.offset(of: \.tstamp_ns) == RecordLayout.tstamp)
        #expect(MemoryLayout<R>.offset(of: \.ifindex) == RecordLayout.ifindex)
        #expect(MemoryLayout<R>.offset(of: \.orig_len) == RecordLayout.origLen)
        #expect(MemoryLayout<R>.offset(of: \.cap_len) == RecordLayout.capLen)
        #expect(MemoryLayout<R>.offset(of: \.flow_hash) == RecordLayout.flowHash)
        #expect(MemoryLayout<R>.offset(of: \.session) == RecordLayout.session)
        #expect(MemoryLayout<R>.offset(of: \.bank) == RecordLayout.bank)
        #expect(MemoryLayout<R>.offset(of: \.direction) == RecordLayout.direction)
        #expect(MemoryLayout<R>.offset(of: \.flags) == RecordLayout.flags)
        #expect(MemoryLayout<R>.offset(of: \.l4_proto) == RecordLayout.l4Proto)
        #expect(MemoryLayout<R>.offset(of: \.l3_off) == RecordLayout.l3Off)
        #expect(MemoryLayout<R>.offset(of: \.l4_off) == RecordLayout.l4Off)
        #expect(MemoryLayout<R>.offset(of: \.gso_size) == RecordLayout.gsoSize)
        #expect(MemoryLayout<R>.offset(of: \.gso_segs) == RecordLayout.gsoSegs)
        #expect(MemoryLayout<R>.offset(of: \.sample_first) == RecordLayout.sampleFirst)
        #expect(MemoryLayout<R>.offset(of: \.tunnel_hdr) == RecordLayout.tunnelHeader)
    }

    @Test("tm_slice_trailer offsets match RecordLayout")
    func sliceTrailer() {
        typealias T = tm_slice_trailer
        #expect(MemoryLayout<T>.offset(of: \.slice_len) == RecordLayout.sliceLength)
        #expect(MemoryLayout<T>.offset(of: \.count) == RecordLayout.sliceCount)
        #expect(MemoryLayout<T>.offset(of: \.sum) == RecordLayout.sliceSums)
        #expect(Int(TM_MAX_SLICES) == RecordLayout.maxSlices)
    }

    @Test("own-output and owner structs keep their layout")
    func ownOutput() {
        #expect(MemoryLayout<tm_dest_key>.size == 20)
        #expect(MemoryLayout<tm_dest_key>.offset(of: \.port) == 16)
        #expect(MemoryLayout<tm_dest_key>.offset(of: \.family) == 18)
        #expect(MemoryLayout<tm_control>.size == 24)
        #expect(MemoryLayout<tm_control>.offset(of: \.owner_start) == 16)
    }

    @Test("record flags, limits and field ids match")
    func constants() {
        #expect(RecordLayout.Flags.truncatedLength.rawValue == UInt8(TM_REC_TRUNC_LENGTH.rawValue))
        #expect(RecordLayout.Flags.truncatedMTU.rawValue == UInt8(TM_REC_TRUNC_MTU.rawValue))
        #expect(RecordLayout.Flags.truncatedMax.rawValue == UInt8(TM_REC_TRUNC_MAX.rawValue))
        #expect(RecordLayout.Flags.vlanInserted.rawValue == UInt8(TM_REC_VLAN_INSERTED.rawValue))
        #expect(RecordLayout.Flags.l4Complete.rawValue == UInt8(TM_REC_L4_COMPLETE.rawValue))
        #expect(RecordLayout.Flags.fragment.rawValue == UInt8(TM_REC_FRAGMENT.rawValue))
        #expect(RecordLayout.Flags.gso.rawValue == UInt8(TM_REC_GSO.rawValue))
        #expect(RecordLayout.Flags.sliced.rawValue == UInt8(TM_REC_SLICED.rawValue))
        #expect(PlanLimits.sessionsPerInterface == Int(TM_MAX_SESSIONS_PER_SLOT))
        #expect(PlanLimits.rulesPerFilterDirection == Int(TM_MAX_RULES))
        #expect(PlanLimits.sessions == Int(TM_MAX_SESSIONS))
        #expect(PlanLimits.interfaces == Int(TM_MAX_SLOTS))
        #expect(PlanLimits.ruleWords * 8 == MemoryLayout<tm_bits>.offset(of: \.nonzero))
        #expect(PlanLimits.protocolValues == UInt32(TM_PROTO_UNKNOWN))
        #expect(PlanLimits.portValues == UInt32(TM_PORT_NONE))
        // A scope's bitmaps are indexed by 16-bit classes.
        #expect(PlanLimits.bitmapsPerPlan <= 65536)
        // The binary search over an address field's intervals (two cuts per
        // rule of a scope, plus one) ends within its steps.
        #expect(2 * PlanLimits.sessionsPerInterface * PlanLimits.rulesPerFilterDirection + 1 <= 1 << Int(TM_ADDR_SEARCH_STEPS))
        #expect(ParsedPacket.protocolUnknown == UInt16(TM_PROTO_UNKNOWN))
        #expect(ParsedPacket.maxVLANDepth == Int(TM_MAX_VLAN_DEPTH))
        #expect(ParsedPacket.maxExtensionHeaders == Int(TM_MAX_EXT_HEADERS))
        #expect(TunnelHeader.length == Int(TM_TUNNEL_HDR_LEN))
        for f in MirrorPlan.Field.allCases {
            let c: UInt32 = switch f {
            case .proto: TM_FIELD_PROTO.rawValue
            case .sourcePort: TM_FIELD_SPORT.rawValue
            case .destinationPort: TM_FIELD_DPORT.rawValue
            case .source4: TM_FIELD_SRC4.rawValue
            case .destination4: TM_FIELD_DST4.rawValue
            case .source6: TM_FIELD_SRC6.rawValue
            case .destination6: TM_FIELD_DST6.rawValue
            }
            #expect(UInt32(f.rawValue) == c)
        }
        #expect(Direction.ingress.index == Int(TM_DIR_INGRESS.rawValue))
        #expect(Direction.egress.index == Int(TM_DIR_EGRESS.rawValue))
    }
}
