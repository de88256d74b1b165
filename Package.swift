// swift-tools-version: 6.1
import PackageDescription

// Dependencies point one way: executable -> metrics, data plane -> core.
// MirrorCore imports no C module and builds and tests anywhere.
let package = Package(
    name: "traffic-mirror",
    products: [
        .executable(name: "traffic-mirror", targets: ["traffic-mirror"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
        .package(url: "https://github.com/apple/swift-log", from: "1.6.0"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle", from: "2.6.0"),
        .package(url: "https://github.com/jpsim/Yams", from: "6.0.0"),
        .package(url: "https://github.com/swift-server/swift-prometheus", from: "2.1.0"),
        .package(url: "https://github.com/hummingbird-project/hummingbird", from: "2.0.0"),
        .package(url: "https://github.com/apple/swift-nio", from: "2.70.0"),
        // Counts allocations for the hot-path check (tm-bench allocations).
        .package(url: "https://github.com/ordo-one/malloc-interposer", from: "1.6.0"),
    ],
    targets: [
        // C shim over libbpf: loading, attaching, maps, rings, test runs.
        .target(
            name: "CMirrorBPF",
            linkerSettings: [.linkedLibrary("bpf"), .linkedLibrary("elf"), .linkedLibrary("z")]
        ),
        // C shim for what Glibc hides from Swift (mmsghdr, sendmmsg, setns).
        .target(name: "CMirrorSys"),
        // The BPF object, compiled from bpf/ at build time by the plugin.
        .target(name: "MirrorBPFObject", plugins: ["BPFObjectBuilder"]),
        .plugin(name: "BPFObjectBuilder", capability: .buildTool()),

        .target(name: "MirrorCore", dependencies: [.product(name: "Yams", package: "Yams")]),
        .target(
            name: "MirrorDataPlane",
            dependencies: [
                "MirrorCore", "CMirrorBPF", "CMirrorSys", "MirrorBPFObject",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ]
        ),
        // Counters from the kernel and the forwarder, /metrics and /healthz.
        .target(
            name: "MirrorMetrics",
            dependencies: [
                "MirrorCore", "MirrorDataPlane", "CMirrorSys", "MirrorBPFObject",
                .product(name: "Prometheus", package: "swift-prometheus"),
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ]
        ),
        .executableTarget(
            name: "traffic-mirror",
            dependencies: [
                "MirrorCore", "MirrorDataPlane", "MirrorMetrics", "MirrorBPFObject", "CMirrorBPF", "CMirrorSys",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "UnixSignals", package: "swift-service-lifecycle"),
            ]
        ),

        // The benchmark's generator, target counter and sink (scripts/bench),
        // and the allocation check of the forwarding path; not shipped.
        .executableTarget(
            name: "tm-bench",
            dependencies: [
                "MirrorCore", "MirrorDataPlane", "CMirrorBPF", "CMirrorSys", "MirrorFixtures", "MirrorTestSupport",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "MallocInterposerSwift", package: "malloc-interposer"),
            ]
        ),

        // Fuzz targets (scripts/fuzz builds them with libFuzzer; plainly
        // built, the binary replays a corpus).
        .executableTarget(name: "tm-fuzz", dependencies: ["MirrorCore"]),

        // Tier 1: pure logic, runs anywhere.
        .testTarget(name: "MirrorCoreTests", dependencies: ["MirrorCore", "MirrorFixtures"]),
        // Tier 2: the loaded BPF program on frames built in Swift (root).
        .testTarget(
            name: "MirrorDataPlaneTests",
            dependencies: ["MirrorDataPlane", "MirrorCore", "CMirrorBPF", "CMirrorSys", "MirrorFixtures", "MirrorTestSupport"]
        ),
        // Tier 3: the built binary between network namespaces (root).
        .testTarget(
            name: "EndToEndTests",
            dependencies: ["MirrorCore", "MirrorDataPlane", "CMirrorBPF", "CMirrorSys", "MirrorFixtures", "MirrorTestSupport"]
        ),
        // Frames built byte by byte (pure Swift, any platform).
        .target(name: "MirrorFixtures", dependencies: ["MirrorCore"], path: "Tests/MirrorFixtures"),
        // Namespaces, captures and processes for the privileged tiers.
        .target(
            name: "MirrorTestSupport",
            dependencies: ["MirrorCore", "MirrorFixtures", "CMirrorSys", "CMirrorBPF"],
            path: "Tests/MirrorTestSupport"
        ),
    ]
)
