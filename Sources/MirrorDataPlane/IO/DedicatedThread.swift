#if canImport(Glibc)
import Glibc
#endif

/// An OS thread for a blocking loop, joined explicitly. The data plane's
/// loop must not run on Swift's cooperative pool, where it would hold a
/// worker forever.
public final class DedicatedThread: @unchecked Sendable {
    // @unchecked: `thread` is written once before start returns and read by
    // join; callers join from one place.
    private var thread = pthread_t()
    private var started = false

    private final class Box {
        let body: () -> Void
        init(_ body: @escaping () -> Void) { self.body = body }
    }

    public init() {}

    public func start(_ body: @escaping @Sendable () -> Void) throws(SystemError) {
        let box = Unmanaged.passRetained(Box(body)).toOpaque()
        let rc = pthread_create(&thread, nil, { arg in
            let box = Unmanaged<Box>.fromOpaque(arg!).takeRetainedValue()
            box.body()
            return nil
        }, box)
        guard rc == 0 else {
            Unmanaged<Box>.fromOpaque(box).release()
            throw SystemError("pthread_create", errno: rc)
        }
        started = true
    }

    public func join() {
        guard started else { return }
        pthread_join(thread, nil)
        started = false
    }
}
