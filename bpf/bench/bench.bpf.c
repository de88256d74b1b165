// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/*
 * The benchmark's two programs (scripts/bench, never part of the agent):
 *
 * tm_xdpgen, the traffic generator: run with BPF_PROG_RUN and
 * BPF_F_TEST_XDP_LIVE_FRAMES, it sends its frame out of one interface as
 * fast as the kernel can, the method xdp-trafficgen uses. Each frame gets
 * the next of `gen_flows` UDP source ports, so the load can be one flow or
 * many.
 *
 * tm_count, the target: attached to the target's interface at tc ingress
 * (tcx), it counts the IPv4 UDP datagrams to `count_port` and drops them, as
 * a NIC of another host would take them away: the target's own stack costs
 * the benchmark next to nothing, whichever mirror sends. A UDP GSO message
 * that crossed the link whole (the sending NIC cuts it, as one with UDP
 * segmentation offload does) counts as the datagrams it carries
 * (gso_segs, which the sending device's transmit path computed).
 *
 * tm_count_ring, the small-ring target: the same count at XDP. A veth with
 * an XDP program takes what its peer sends into a 256-slot ring drained by
 * NAPI, like the receive ring of a sensor's NIC or of a VM's virtio queue;
 * what finds the ring full is dropped (the peer's tx_dropped), so the
 * count shows what a receiver with a small ring keeps of a mirror's bursts.
 * (It costs more than tm_count: veth copies every skb it hands to XDP.)
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/pkt_cls.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/udp.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

const volatile __u32 gen_ifindex = 0;
const volatile __u32 gen_flows = 1;
const volatile __u16 gen_base_port = 10000;

/* Frames generated on this CPU. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} gen_count SEC(".maps");

SEC("xdp")
int tm_xdpgen(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data, *end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	struct iphdr *ip = (void *)(eth + 1);
	struct udphdr *udp = (void *)(ip + 1);
	__u32 zero = 0;
	__u64 *n = bpf_map_lookup_elem(&gen_count, &zero);

	if (!n || (void *)(udp + 1) > end)
		return XDP_ABORTED;
	udp->source = bpf_htons(gen_base_port + (__u16)(gen_flows > 1 ? *n % gen_flows : 0));
	udp->check = 0;
	(*n)++;
	return bpf_redirect(gen_ifindex, 0);
}

const volatile __u16 count_port = 4789;

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} count_frames SEC(".maps");

/* Counts a frame between data and end as `datagrams` if it is an IPv4 UDP
 * datagram to count_port: whether it was one (and is to be dropped). */
static __always_inline int tm_counted(void *data, void *end, __u32 datagrams)
{
	struct ethhdr *eth = data;
	struct iphdr *ip = (void *)(eth + 1);
	struct udphdr *udp;
	__u32 zero = 0;
	__u64 *n;

	if ((void *)(ip + 1) > end || eth->h_proto != bpf_htons(ETH_P_IP) || ip->protocol != IPPROTO_UDP)
		return 0;
	udp = (void *)ip + ip->ihl * 4;
	if ((void *)(udp + 1) > end || udp->dest != bpf_htons(count_port))
		return 0;
	n = bpf_map_lookup_elem(&count_frames, &zero);
	if (n)
		*n += datagrams;
	return 1;
}

SEC("tc")
int tm_count(struct __sk_buff *skb)
{
	__u32 segs = skb->gso_segs;

	/* A GSO skb whose count the sending path did not fill in: its
	 * datagrams from the length (IPv4, UDP, no options: what both
	 * mirrors send). */
	if (segs == 0 && skb->gso_size)
		segs = (skb->len - 14 - 20 - 8 + skb->gso_size - 1) / skb->gso_size;
	return tm_counted((void *)(long)skb->data, (void *)(long)skb->data_end, segs > 1 ? segs : 1) ?
		TC_ACT_SHOT : TC_ACT_OK;
}

SEC("xdp")
int tm_count_ring(struct xdp_md *ctx)
{
	return tm_counted((void *)(long)ctx->data, (void *)(long)ctx->data_end, 1) ? XDP_DROP : XDP_PASS;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
