import Foundation
@testable import MirrorDataPlane
import MirrorCore
import Testing

/// `receive`'s files under a flood of senders: the pcapng interface table
/// is bounded, and size rotation counts the description blocks.
@Suite("Capture files")
struct CaptureFilesTests {
    /// Block types of a little-endian pcapng file, walked by their lengths.
    static func blocks(_ b: [UInt8]) -> [Int] {
        func le32(_ o: Int) -> Int { Int(b[o]) | Int(b[o + 1]) << 8 | Int(b[o + 2]) << 16 | Int(b[o + 3]) << 24 }
        var types = [Int](), o = 0
        while o + 12 <= b.count {
            let length = le32(o + 4)
            guard length >= 12, o + length <= b.count else { return types + [-1] }
            types.append(le32(o))
            o += length
        }
        return types
    }

    static let frame = [UInt8](repeating: 0xAB, count: 60)

    static func write(_ files: CaptureFiles, senders: Int) throws {
        for i in 0..<senders {
            try Self.frame.withUnsafeBytes {
                try files.append(frame: $0, timestamp: UInt64(i) * 1000, direction: .ingress,
                                 interface: .init(sender: "198.18.\(i / 256).\(i % 256)", ifindex: 2))
            }
        }
        try files.flush()
    }

    @Test("1100 senders: 1023 described, the other 77 frames under one more interface; every frame written")
    func interfaceCap() throws {
        let dir = NSTemporaryDirectory() + "tm-capture-\(getpid())-cap"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let files = try CaptureFiles(pattern: dir + "/x.pcapng", format: .pcapng, rotation: .init())
        try Self.write(files, senders: 1100)
        let types = Self.blocks(Array(try Data(contentsOf: URL(fileURLWithPath: dir + "/x.pcapng"))))
        #expect(types.filter { $0 == 1 }.count == CaptureFiles.maxInterfaces, "interface description blocks")
        #expect(types.filter { $0 == 6 }.count == 1100, "enhanced packet blocks")
        #expect(!types.contains(-1) && files.foldedFrames == 1100 - (CaptureFiles.maxInterfaces - 1))
    }

    @Test("rotation by size: every file within the limit, description blocks included; frames add up")
    func rotationCountsBlocks() throws {
        let dir = NSTemporaryDirectory() + "tm-capture-\(getpid())-rot"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let files = try CaptureFiles(pattern: dir + "/x.pcapng", format: .pcapng, rotation: .init(bytes: 4096))
        try Self.write(files, senders: 300)
        var total = 0
        for path in files.paths {
            let bytes = Array(try Data(contentsOf: URL(fileURLWithPath: path)))
            #expect(bytes.count <= 4096, "\(path): \(bytes.count) bytes")
            let types = Self.blocks(bytes)
            #expect(types.first == 0x0A0D0D0A && !types.contains(-1))
            // Each frame's sender is new to its file: one description block per frame.
            #expect(types.filter { $0 == 1 }.count == types.filter { $0 == 6 }.count)
            total += types.filter { $0 == 6 }.count
        }
        #expect(files.paths.count > 1 && total == 300 && files.framesPerFile.reduce(0, +) == 300)
    }
}
