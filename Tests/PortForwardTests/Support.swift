import Foundation
#if canImport(Glibc)
@preconcurrency import Glibc
#endif

// Real things for the tests: directories, FIFOs and network namespaces of their own.

/// A directory of its own under /tmp, removed with what it holds.
final class TemporaryDirectory {
    let path: String

    init() throws {
        var template = Array("/tmp/pf-test-XXXXXX".utf8CString)
        guard let made = mkdtemp(&template) else { throw POSIXError(.EIO) }
        path = String(cString: made)
    }

    deinit { try? FileManager.default.removeItem(atPath: path) }
}

/// Opens a FIFO for writing after a delay (unless cancelled first): it unblocks a reader that
/// wrongly waited in open(), so that a regression shows as a slow test, not a hung one.
final class DelayedFIFOWriter: @unchecked Sendable {
    private let lock = NSLock()
    private var cancelled = false

    init(_ path: String, after seconds: Double) {
        let thread = Thread { [self] in
            Thread.sleep(forTimeInterval: seconds)
            lock.lock()
            defer { lock.unlock() }
            guard !cancelled else { return }
            let fd = open(path, O_WRONLY | O_NONBLOCK)
            if fd >= 0 { close(fd) }
        }
        thread.start()
    }

    func cancel() {
        lock.lock()
        cancelled = true
        lock.unlock()
    }
}

/// A network namespace made with `ip netns add` (the tests run as root), deleted at the end.
final class RealNetworkNamespace {
    let name = "pf-unit-\(UInt32.random(in: 0...UInt32.max))"
    var path: String { "/run/netns/\(name)" }
    private var deleted = false

    init() throws {
        try Self.ip(["netns", "add", name])
    }

    func delete() throws {
        guard !deleted else { return }
        deleted = true
        try Self.ip(["netns", "del", name])
    }

    deinit { try? delete() }

    private static func ip(_ arguments: [String]) throws {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: ["/usr/sbin/ip", "/sbin/ip", "/usr/bin/ip", "/bin/ip"].first { access($0, X_OK) == 0 } ?? "/usr/sbin/ip")
        process.arguments = arguments
        try process.run()
        process.waitUntilExit()
        guard process.terminationStatus == 0 else {
            throw POSIXError(.EPERM, userInfo: [NSLocalizedDescriptionKey: "ip \(arguments.joined(separator: " ")) failed (root is needed)"])
        }
    }
}
