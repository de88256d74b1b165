#if canImport(Glibc)
import Glibc
#endif

/// A failed system or libbpf call: the operation it was for and the errno.
public struct SystemError: Error, CustomStringConvertible, Equatable {
    public var operation: String
    public var errno: Int32

    public init(_ operation: String, errno: Int32) {
        self.operation = operation
        self.errno = errno
    }

    /// Builds the error from a shim's `-errno` return value.
    public init(_ operation: String, code: Int32) {
        self.init(operation, errno: -code)
    }

    public var description: String {
        "\(operation): \(String(cStringPointer: strerror(errno))) (errno \(errno))"
    }

    /// Returns `rc` when it is not negative, else throws for `operation`.
    @discardableResult
    public static func check(_ rc: Int32, _ operation: @autoclosure () -> String) throws(SystemError) -> Int32 {
        if rc < 0 { throw SystemError(operation(), code: rc) }
        return rc
    }
}

/// A file descriptor owned by exactly one value; closed when it goes away.
public struct OwnedDescriptor: ~Copyable {
    public let raw: Int32

    public init(_ raw: Int32) {
        self.raw = raw
    }

    deinit {
        if raw >= 0 { _ = close(raw) }
    }
}

/// A problem the user can fix, with the remedy. `run` prints it as one line
/// and exits 1; config problems use their own type and exit 2.
public struct OperationalError: Error, CustomStringConvertible {
    public var message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}
