import ArgumentParser
import CMirrorBPF
import MirrorBPFObject
import MirrorCore

#if canImport(Glibc)
import Glibc
#endif

struct VersionCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "version",
        abstract: "Print the version and build facts (libbpf version, BPF object hash)."
    )

    func run() throws {
        let kernel = KernelRelease.current()
        print("traffic-mirror \(TrafficMirror.version)")
        print("libbpf \(libbpfVersion)")
        print("bpf object sha256 \(MirrorBPFObject.sha256) (\(MirrorBPFObject.bytes.count) bytes)")
        print("bpf compiler \(MirrorBPFObject.compiler)")
        print("kernel \(kernel)")
    }
}

/// The version of the libbpf the agent runs with ("v1.1").
let libbpfVersion = String(decoding: UnsafeRawBufferPointer(start: CMirrorBPF_libbpf_version(), count: strlen(CMirrorBPF_libbpf_version())), as: UTF8.self)
