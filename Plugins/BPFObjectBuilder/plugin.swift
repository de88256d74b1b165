import Foundation
import PackagePlugin

/// Compiles the BPF program in `bpf/` with clang and embeds the object in
/// the `MirrorBPFObject` module, so a plain `swift build` produces a binary
/// that carries its own kernel side. Nothing generated lands in the source
/// tree: the object and the Swift file live in the plugin's work directory.
@main
struct BPFObjectBuilder: BuildToolPlugin {
    func createBuildCommands(context: PluginContext, target: Target) throws -> [Command] {
        let root = context.package.directoryURL
        let bpf = root.appending(path: "bpf")
        let script = root.appending(path: "scripts/build-bpf")
        let output = context.pluginWorkDirectoryURL.appending(path: "MirrorBPFObject+Embedded.swift")
        let sources = (FileManager.default.subpaths(atPath: bpf.path) ?? [])
            .filter { $0.hasSuffix(".c") || $0.hasSuffix(".h") }
            .sorted()
            .map { bpf.appending(path: $0) }
        return [
            .buildCommand(
                displayName: "Compiling the BPF object from bpf/",
                executable: URL(fileURLWithPath: "/bin/bash"),
                arguments: [script.path, "--swift", output.path],
                inputFiles: sources + [script],
                outputFiles: [output]
            ),
        ]
    }
}
