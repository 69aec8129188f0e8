import CLinuxShim
#if canImport(Glibc)
@preconcurrency import Glibc
#endif

/// A failed system call: which call, on what, and the errno. `description` is the one line a
/// user sees.
public struct SystemError: Error, CustomStringConvertible, Sendable {
    public var call: String
    public var errno: Int32
    public var subject: String

    public init(_ call: String, errno: Int32 = pf_errno(), subject: String = "") {
        self.call = call
        self.errno = errno
        self.subject = subject
    }

    public var reason: String { SystemError.reason(errno) }

    public static func reason(_ errno: Int32) -> String {
        String(cString: strerror(errno)).lowercased()
    }

    public var description: String {
        subject.isEmpty ? "\(call): \(reason)" : "\(call) \(subject): \(reason)"
    }
}

/// Runs a system call that returns -1 on failure.
@inline(__always)
public func check<T: BinaryInteger>(_ call: String, subject: String = "", _ body: () -> T) throws -> T {
    while true {
        let result = body()
        if result >= 0 { return result }
        let code = pf_errno()
        if code == EINTR { continue }
        throw SystemError(call, errno: code, subject: subject)
    }
}
