import CMirrorSys
import Foundation
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// Watches a configuration file and calls `changed` with its new text, on
/// a thread of its own, whenever what the file holds differs from the text
/// it was started with or last reported. It watches (inotify) the file's
/// directory and, where the path is a symbolic link, the directory of what
/// it resolves to, so every way a file is replaced is seen: written in place
/// (IN_CLOSE_WRITE), renamed over (IN_MOVED_TO), a symbolic link changed,
/// and the swap of the `..data` link Kubernetes makes for ConfigMap volumes
/// (`config.yaml -> ..data/config.yaml`, `..data -> ..TIMESTAMP`: the kubelet
/// writes a new timestamped directory and renames a new `..data` over the
/// old one). Events are gathered for `settle` (an editor's save is several)
/// and the file read once; an event that leaves the text as it was (another
/// file of the directory, a touch) reports nothing.
public final class ConfigWatcher: @unchecked Sendable {
    // @unchecked: `stopping` is atomic; the rest is the thread's own.
    private let path: String
    private let fd: Int32
    private var last: String
    private var watched: [Int32: String] = [:]
    private let stopping = Atomic<Bool>(false)
    private let thread = DedicatedThread()
    static let settleMilliseconds: Int32 = 100
    private static let mask = UInt32(IN_CLOSE_WRITE | IN_MOVED_TO | IN_MOVED_FROM | IN_CREATE | IN_DELETE | IN_ATTRIB)

    /// `text` is what the caller loaded from `path`; a difference found on
    /// the first look (the file changed in between) is reported too.
    public init(path: String, text: String, changed: @escaping @Sendable (String) -> Void) throws(SystemError) {
        self.path = path
        self.last = text
        fd = try SystemError.check(inotify_init1(Int32(IN_CLOEXEC | IN_NONBLOCK)), "inotify_init1")
        watchDirectories()
        guard !watched.isEmpty else {
            _ = CMirrorSys_close(fd)
            throw SystemError("inotify_add_watch \((path as NSString).deletingLastPathComponent)", errno: errno)
        }
        let me = self
        do {
            try thread.start { me.run(changed) }
        } catch {
            _ = CMirrorSys_close(fd)
            throw error
        }
    }

    /// The directories the path's text depends on: the path's own (where
    /// a rename over it or the `..data` swap happens) and that of the file
    /// it resolves to (where an edit through a link happens). Watches are
    /// added again after each change, since a swap makes new directories
    /// (IN_IGNORED drops the old ones' watches).
    private func watchDirectories() {
        let absolute = path.hasPrefix("/") ? path : FileManager.default.currentDirectoryPath + "/" + path
        var dirs = [(absolute as NSString).deletingLastPathComponent]
        if let resolved = realpath(absolute, nil) {
            dirs.append((String(cString: resolved) as NSString).deletingLastPathComponent)
            free(resolved)
        }
        for dir in dirs where !watched.values.contains(dir) {
            let wd = inotify_add_watch(fd, dir, Self.mask)
            if wd >= 0 { watched[wd] = dir }
        }
    }

    private func run(_ changed: @Sendable (String) -> Void) {
        CMirrorSys_set_thread_name("tm-config")
        var buffer = [UInt8](repeating: 0, count: 16 * 1024)
        var pending = true // look once at start
        while !stopping.load(ordering: .acquiring) {
            var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            var timeout: Int32 = pending ? Self.settleMilliseconds : 200
            while poll(&p, 1, timeout) > 0 {
                drain(&buffer)
                pending = true
                timeout = Self.settleMilliseconds
            }
            guard pending, !stopping.load(ordering: .acquiring) else { continue }
            pending = false
            watchDirectories()
            // A missing or unreadable file (mid-swap, deleted) is no change:
            // the running plan stays until a readable one is there.
            guard let data = FileManager.default.contents(atPath: path),
                  let text = String(data: data, encoding: .utf8), text != last
            else { continue }
            last = text
            changed(text)
        }
    }

    /// Reads every queued event; forgets the watches the kernel dropped.
    private func drain(_ buffer: inout [UInt8]) {
        while true {
            let n = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            guard n > 0 else { return }
            var offset = 0
            while offset + MemoryLayout<inotify_event>.size <= n {
                let (wd, mask, length) = buffer.withUnsafeBytes { raw in
                    let e = raw.loadUnaligned(fromByteOffset: offset, as: inotify_event.self)
                    return (e.wd, e.mask, Int(e.len))
                }
                if mask & UInt32(IN_IGNORED) != 0 { watched[wd] = nil }
                offset += MemoryLayout<inotify_event>.size + length
            }
        }
    }

    public func stop() {
        guard !stopping.exchange(true, ordering: .acquiringAndReleasing) else { return }
        thread.join()
        _ = CMirrorSys_close(fd)
    }

    deinit { stop() }
}
