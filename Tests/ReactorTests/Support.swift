import Testing
@_spi(Testing) @testable import Reactor
import CLinuxShim
#if canImport(Glibc)
@preconcurrency import Glibc
#endif

/// A backend under test: epoll, or io_uring with the ring set-up the reactor picks, or with
/// one of the set-ups it falls back to on older kernels.
struct Backend: Sendable, CustomTestStringConvertible {
    var choice: IOBackendChoice
    /// An index into `UringReactor.setups` to force; nil lets the reactor choose.
    var setup: Int?
    var testDescription: String
}

/// Every test runs once per backend.
let backends: [Backend] = [
    Backend(choice: .epoll, setup: nil, testDescription: "epoll"),
    Backend(choice: .uring, setup: nil, testDescription: "io_uring"),
    Backend(choice: .uring, setup: 1, testDescription: "io_uring (COOP_TASKRUN fallback)"),
    Backend(choice: .uring, setup: 2, testDescription: "io_uring (no set-up flags)"),
]

/// Builds the backend under test. For io_uring the test case is skipped, with the reason shown
/// as a warning, when no ring can be set up or the kernel lacks an opcode the test exercises.
func makeReactor(_ backend: Backend, exercising operations: [Operation], bufferSize: Int = 16 * 1024) throws -> ReactorBackend {
    Process.ignoreBrokenPipes()
    guard backend.choice == .uring else { return try Reactors.make(backend.choice, bufferSize: bufferSize) }
    for operation in operations where !UringReactor.kernelSupports(operation) {
        try skip("io_uring: the kernel lacks the opcode behind `\(operation)`")
    }
    do {
        guard let setup = backend.setup else { return try UringReactor(bufferSize: bufferSize) }
        return try UringReactor(bufferSize: bufferSize, setups: [UringReactor.setups[setup]])
    } catch {
        try skip("\(backend.testDescription) unavailable: \(error)")
    }
}

func skip(_ reason: String) throws -> Never {
    Issue.record(Comment(rawValue: "skipped: \(reason)"), severity: .warning)
    try Test.cancel(Comment(rawValue: reason))
}

/// Records completions and hands each, with how many came so far, to `next`.
final class Recorder: CompletionHandler {
    var completions: [Completion] = []
    var next: (Completion, Int) -> Void = { _, _ in }

    func complete(_ completion: Completion) {
        completions.append(completion)
        next(completion, completions.count)
    }
}

final class Deferred: DeferredTask {
    let body: () -> Void
    init(_ body: @escaping () -> Void) { self.body = body }
    func runDeferred() { body() }
}

/// A shared, mutable log for handlers and tasks of one test.
final class Log {
    var entries: [String] = []
    func add(_ entry: String) { entries.append(entry) }
}

/// Stops a loop that runs too long, so a broken backend fails instead of hanging.
final class Watchdog: CompletionHandler {
    unowned let reactor: ReactorBackend
    var fired = false
    init(_ reactor: ReactorBackend) { self.reactor = reactor }
    func complete(_ completion: Completion) {
        fired = true
        reactor.stop()
    }
}

func runLoop(_ reactor: ReactorBackend, milliseconds: UInt64 = 3000, sourceLocation: SourceLocation = #_sourceLocation) throws {
    let watchdog = Watchdog(reactor)
    let id = reactor.timer(nanoseconds: milliseconds * 1_000_000, handler: watchdog, tag: 0)
    try reactor.run()
    reactor.cancelTimer(id)
    #expect(!watchdog.fired, "the watchdog stopped the loop", sourceLocation: sourceLocation)
}

/// One short turn of the loop or a few: enough to submit what is queued and take what is done.
func runBriefly(_ reactor: ReactorBackend) throws {
    final class Stopper: CompletionHandler {
        unowned let reactor: ReactorBackend
        init(_ reactor: ReactorBackend) { self.reactor = reactor }
        func complete(_ completion: Completion) { reactor.stop() }
    }
    let stopper = Stopper(reactor)
    _ = reactor.timer(nanoseconds: 5_000_000, handler: stopper, tag: 0)
    try reactor.run()
}

// MARK: loopback sockets

func loopbackListener() throws -> (FileDescriptor, SocketAddress) {
    let fd = try Sockets.listen(SocketAddress(ip: "127.0.0.1", port: 0)!)
    return (fd, Sockets.localAddress(fd))
}

/// A loopback port that refuses connections for as long as the returned socket is open: bound,
/// not listening. (A closed listener's port can be taken meanwhile by another test's listener,
/// running in parallel, and the connect then succeeds.)
func refusingPort() throws -> (FileDescriptor, SocketAddress) {
    let address = SocketAddress(ip: "127.0.0.1", port: 0)!
    let fd = try Sockets.socket(for: address)
    guard address.withSockaddr({ Glibc.bind(fd, $0, $1) }) == 0 else {
        let error = SystemError("bind", subject: address.description)
        Glibc.close(fd)
        throw error
    }
    return (fd, Sockets.localAddress(fd))
}

/// A client socket connected (blocking, which loopback finishes at once), then made non-blocking.
func connectedClient(to address: SocketAddress) throws -> FileDescriptor {
    let fd = try Sockets.socket(for: address)
    Sockets.setBlocking(fd, true)
    let result = address.withSockaddr { Glibc.connect(fd, $0, $1) }
    if result != 0 {
        let error = SystemError("connect", subject: address.description)
        Glibc.close(fd)
        throw error
    }
    Sockets.setBlocking(fd, false)
    return fd
}

/// Both ends of one loopback TCP connection, non-blocking.
func tcpPair() throws -> (FileDescriptor, FileDescriptor) {
    let (listener, address) = try loopbackListener()
    defer { Glibc.close(listener) }
    let client = try connectedClient(to: address)
    var ready = pollfd(fd: listener, events: Int16(POLLIN), revents: 0)
    _ = poll(&ready, 1, 1000)
    let server = pf_accept4(listener, nil, nil)
    if server < 0 {
        Glibc.close(client)
        throw SystemError("accept4")
    }
    return (client, server)
}

/// Writes to `fd` until the kernel takes no more: its send buffer and `peer`'s receive buffer are
/// full (both made small first, so this is quick), and a write issued now waits for the peer.
func fillSendBuffer(_ fd: FileDescriptor, _ peer: FileDescriptor) {
    var size: Int32 = 4096
    setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &size, socklen_t(MemoryLayout<Int32>.size))
    setsockopt(peer, SOL_SOCKET, SO_RCVBUF, &size, socklen_t(MemoryLayout<Int32>.size))
    var scratch = [UInt8](repeating: 0x61, count: 64 * 1024)
    while Glibc.write(fd, &scratch, scratch.count) > 0 {}
}

/// Bytes that differ from one offset to the next, so misplaced data shows.
func pattern(_ count: Int, seed: Int = 0) -> UnsafeMutableRawBufferPointer {
    let bytes = UnsafeMutableRawBufferPointer.allocate(byteCount: count, alignment: 16)
    for index in 0..<count { bytes[index] = UInt8(truncatingIfNeeded: (index &* 7 &+ seed) % 251) }
    return bytes
}

func writeAll(_ fd: FileDescriptor, _ text: String) {
    var text = text
    text.withUTF8 { bytes in
        var offset = 0
        while offset < bytes.count {
            let written = Glibc.write(fd, bytes.baseAddress! + offset, bytes.count - offset)
            if written <= 0 { return }
            offset += written
        }
    }
}

/// Waits up to a second for `fd` to turn readable, then reads once: the byte count, or -errno.
func readOnce(_ fd: FileDescriptor) -> Int {
    var ready = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
    _ = poll(&ready, 1, 1000)
    var scratch = [UInt8](repeating: 0, count: 256)
    let result = Glibc.read(fd, &scratch, scratch.count)
    return result < 0 ? -Int(pf_errno()) : result
}

// MARK: the probe process

/// The package root: this file is Tests/ReactorTests/Support.swift.
let packageRoot = String(#filePath.split(separator: "/", omittingEmptySubsequences: false).dropLast(3).joined(separator: "/"))

/// `swift build` builds it with the tests (`Tests/ReactorProbe`).
let probeBinary = packageRoot + "/.build/debug/reactor-probe"

/// How `reactor-probe` exited (negative: killed by that signal), what it printed, and the
/// key=value fields of its last line.
struct ProbeResult {
    var status: Int32
    var output: String
    var fields: [String: String]
}

/// Runs `reactor-probe <mode>` against `backend` in a child process of its own and waits for it,
/// 10 seconds at most. A probe that finds no io_uring skips the test.
func runProbe(_ mode: String, _ backend: Backend) throws -> ProbeResult {
    try #require(access(probeBinary, X_OK) == 0, "\(probeBinary) is missing: build it with `swift build --build-tests`")
    var arguments = [probeBinary, mode, backend.choice == .epoll ? "epoll" : "uring"]
    if let setup = backend.setup { arguments.append(String(setup)) }
    var ends: [Int32] = [-1, -1]
    guard pf_pipe2(&ends) == 0 else { throw SystemError("pipe2") }
    defer { Glibc.close(ends[0]) }
    let pid: pid_t
    do {
        pid = try ChildProcess.spawn(arguments, stdout: ends[1], stderr: ends[1])
    } catch {
        Glibc.close(ends[1])
        throw error
    }
    Glibc.close(ends[1])

    var output: [UInt8] = []
    var chunk = [UInt8](repeating: 0, count: 4096)
    let deadline = Clock.nanoseconds() + 10_000_000_000
    while true {
        let now = Clock.nanoseconds()
        if now >= deadline {
            kill(pid, SIGKILL)
            break
        }
        var ready = pollfd(fd: ends[0], events: Int16(POLLIN), revents: 0)
        _ = poll(&ready, 1, Int32((deadline - now) / 1_000_000) + 1)
        let count = Glibc.read(ends[0], &chunk, chunk.count)
        if count > 0 {
            output += chunk[..<count]
        } else if count == 0 || (pf_errno() != EAGAIN && pf_errno() != EINTR) {
            break
        }
    }
    var status: Int32 = 0
    while waitpid(pid, &status, 0) < 0 && pf_errno() == EINTR {}
    // The wait status: the exit code in the second byte, or the signal in the low seven bits.
    let code = status & 0x7F == 0 ? (status >> 8) & 0xFF : -(status & 0x7F)

    let text = String(decoding: output, as: UTF8.self)
    let line = text.split(separator: "\n").last ?? ""
    var fields: [String: String] = [:]
    for field in line.split(separator: " ") {
        let parts = field.split(separator: "=", maxSplits: 1)
        if parts.count == 2 { fields[String(parts[0])] = String(parts[1]) }
    }
    if code == 2, text.hasPrefix("skip=") { try skip(String(text.dropFirst(5))) }
    return ProbeResult(status: code, output: text, fields: fields)
}
