import CLinuxShim
@_spi(Testing) import Reactor
#if canImport(Glibc)
@preconcurrency import Glibc
#endif

// A child process for the reactor tests that run out of file descriptors: it lowers its own
// RLIMIT_NOFILE, so the test process (which runs other tests in parallel) keeps all of its own.
//
//   reactor-probe backlog <epoll|uring> [set-up index]
//     Connections wait in the backlog while no descriptor is free; once descriptors free up,
//     every one of them must be accepted within a second, with no new connection arriving to
//     wake the listener.
//   reactor-probe close <epoll|uring> [set-up index]
//     The listener is closed while its accept rests after EMFILE, and its number is reused by
//     a new listener with a connection waiting: the old accept must neither complete again nor
//     take that connection.
//   reactor-probe signalfd <epoll|uring>
//     With no descriptor left, pf_signalfd fails with -EMFILE and leaves the signals unblocked
//     (so Ctrl-C still ends a process that could not watch for it); with one free, it works
//     and blocks them. The backend is not used.
//
// Prints one line of key=value fields and exits 0 (the reactor kept its contract), 1 (it did
// not) or 2 (skipped: no io_uring here).

let descriptorLimit: UInt64 = 64
let clientCount = 4
let connectAfter: UInt64 = 20_000_000
let freeAfter: UInt64 = 200_000_000
let acceptWithin: UInt64 = 1_000_000_000
let closedListenerWatch: UInt64 = 150_000_000

func fail(_ message: String) -> Never {
    print("error=\"\(message)\"")
    exit(1)
}

func errorName(_ code: Int32) -> String {
    switch code {
    case EMFILE: return "EMFILE"
    case ENFILE: return "ENFILE"
    case ENOBUFS: return "ENOBUFS"
    case ENOMEM: return "ENOMEM"
    default: return "errno\(code)"
    }
}

func makeReactor(_ name: String, setup: Int?) -> ReactorBackend {
    do {
        switch name {
        case "epoll":
            return try EpollReactor(bufferSize: 4096)
        case "uring":
            guard let setup else { return try UringReactor(bufferSize: 4096) }
            return try UringReactor(bufferSize: 4096, setups: [UringReactor.setups[setup]])
        default:
            fail("unknown backend \(name)")
        }
    } catch {
        print("skip=\"\(name) unavailable: \(error)\"")
        exit(2)
    }
}

/// Descriptors taken until the process has none left.
func exhaustDescriptors() -> [FileDescriptor] {
    let null = open("/dev/null", O_RDONLY | O_CLOEXEC)
    if null < 0 { fail("open /dev/null: errno \(pf_errno())") }
    var taken = [null]
    taken.reserveCapacity(Int(descriptorLimit))
    while true {
        let copy = dup(null)
        if copy >= 0 {
            taken.append(copy)
            continue
        }
        if pf_errno() != EMFILE { fail("dup: errno \(pf_errno()) before EMFILE") }
        return taken
    }
}

func connectWaiting(_ clients: [FileDescriptor], to address: SocketAddress) {
    for client in clients {
        let result = address.withSockaddr { Glibc.connect(client, $0, $1) }
        if result != 0 && pf_errno() != EINPROGRESS { fail("connect: errno \(pf_errno())") }
    }
}

/// Calls `body` when its timer fires.
final class Alarm: CompletionHandler {
    let body: () -> Void
    init(_ body: @escaping () -> Void) { self.body = body }
    func complete(_ completion: Completion) { body() }
}

/// Counts what the listener's accept delivers, and when.
final class Acceptor: CompletionHandler {
    unowned let reactor: ReactorBackend
    var accepted = 0
    var acceptedBeforeFree = 0
    var errors = 0
    var firstError: Int32 = 0
    var freedAt: UInt64 = 0
    var lastAcceptAt: UInt64 = 0
    var completionsAfterClose = 0
    var closed = false
    var onError: () -> Void = {}

    init(_ reactor: ReactorBackend) { self.reactor = reactor }

    func complete(_ completion: Completion) {
        if closed {
            completionsAfterClose += 1
            if completion.result >= 0 { reactor.close(completion.result) }
            return
        }
        if completion.result < 0 {
            errors += 1
            if firstError == 0 { firstError = -completion.result }
            onError()
            return
        }
        reactor.close(completion.result)
        if freedAt == 0 { acceptedBeforeFree += 1 }
        accepted += 1
        lastAcceptAt = Clock.nanoseconds()
        if accepted == clientCount { reactor.stop() }
    }
}

func probeSignalfd() -> Never {
    if pf_set_nofile_soft_limit(descriptorLimit) != 0 { fail("setrlimit: errno \(pf_errno())") }
    var fillers = exhaustDescriptors()
    var signals: [Int32] = [SIGINT, SIGWINCH]
    func blocked() -> Bool {
        var mask = sigset_t()
        sigprocmask(SIG_BLOCK, nil, &mask)
        return sigismember(&mask, SIGINT) == 1 || sigismember(&mask, SIGWINCH) == 1
    }
    let failed = pf_signalfd(&signals, Int32(signals.count))
    let blockedAfterFailure = blocked()
    Glibc.close(fillers.removeLast())
    let made = pf_signalfd(&signals, Int32(signals.count))
    let blockedAfterSuccess = blocked()
    print("mode=signalfd failure=\(failed < 0 ? errorName(-failed) : "none") blocked_after_failure=\(blockedAfterFailure)"
          + " made=\(made >= 0) blocked_after_success=\(blockedAfterSuccess)")
    exit(failed == -EMFILE && !blockedAfterFailure && made >= 0 && blockedAfterSuccess ? 0 : 1)
}

let arguments = CommandLine.arguments
if arguments.count >= 2 && arguments[1] == "signalfd" { probeSignalfd() }
guard arguments.count >= 3, ["backlog", "close"].contains(arguments[1]) else {
    fail("usage: reactor-probe <backlog|close|signalfd> <epoll|uring> [set-up index]")
}
let mode = arguments[1]
let reactor = makeReactor(arguments[2], setup: arguments.count > 3 ? Int(arguments[3]) : nil)
if pf_set_nofile_soft_limit(descriptorLimit) != 0 { fail("setrlimit: errno \(pf_errno())") }

let listener: FileDescriptor
let address: SocketAddress
do {
    listener = try Sockets.listen(SocketAddress(ip: "127.0.0.1", port: 0)!)
    address = Sockets.localAddress(listener)
} catch {
    fail("\(error)")
}
let clients = (0..<clientCount).map { _ in pf_socket_nonblock(AF_INET, Int32(SOCK_STREAM.rawValue)) }
if clients.contains(where: { $0 < 0 }) { fail("socket: errno \(pf_errno())") }
var fillers = exhaustDescriptors()

let acceptor = Acceptor(reactor)
reactor.accept(listener, handler: acceptor, tag: 1)
let connecting = Alarm { connectWaiting(clients, to: address) }
_ = reactor.timer(nanoseconds: connectAfter, handler: connecting, tag: 0)

switch mode {
case "backlog":
    // Nothing connects after this: only the reactor's own retry can take the waiting ones.
    let freeing = Alarm {
        for fd in fillers { Glibc.close(fd) }
        fillers.removeAll()
        acceptor.freedAt = Clock.nanoseconds()
    }
    let deadline = Alarm { reactor.stop() }
    _ = reactor.timer(nanoseconds: connectAfter + freeAfter, handler: freeing, tag: 0)
    _ = reactor.timer(nanoseconds: connectAfter + freeAfter + acceptWithin, handler: deadline, tag: 0)
    do { try reactor.run() } catch { fail("run: \(error)") }

    let milliseconds = acceptor.lastAcceptAt > acceptor.freedAt && acceptor.freedAt > 0
        ? (acceptor.lastAcceptAt - acceptor.freedAt) / 1_000_000 : 0
    print("mode=backlog backend=\(reactor.name) clients=\(clientCount) accepted=\(acceptor.accepted)"
          + " accepted_before_free=\(acceptor.acceptedBeforeFree) errors=\(acceptor.errors)"
          + " first_error=\(errorName(acceptor.firstError)) last_accept_after_free_ms=\(milliseconds)")
    let kept = acceptor.accepted == clientCount && acceptor.acceptedBeforeFree == 0 && acceptor.errors > 0
    exit(kept ? 0 : 1)

default:
    var reusedNumber = false
    var replacement: FileDescriptor = -1
    var latecomer: FileDescriptor = -1
    acceptor.onError = {
        // The first error of this accept: it rests now. The number goes to a listener the
        // reactor has never seen, with a connection waiting on it.
        acceptor.onError = {}
        reactor.close(listener)
        acceptor.closed = true
        do {
            replacement = try Sockets.listen(SocketAddress(ip: "127.0.0.1", port: 0)!)
        } catch {
            fail("\(error)")
        }
        reusedNumber = replacement == listener
        Glibc.close(fillers.removeLast())
        latecomer = pf_socket_nonblock(AF_INET, Int32(SOCK_STREAM.rawValue))
        if latecomer < 0 { fail("socket: errno \(pf_errno())") }
        connectWaiting([latecomer], to: Sockets.localAddress(replacement))
        _ = reactor.timer(nanoseconds: closedListenerWatch, handler: Alarm { reactor.stop() }, tag: 0)
    }
    let deadline = Alarm { reactor.stop() }
    _ = reactor.timer(nanoseconds: connectAfter + acceptWithin, handler: deadline, tag: 0)
    do { try reactor.run() } catch { fail("run: \(error)") }

    var ready = pollfd(fd: replacement, events: Int16(POLLIN), revents: 0)
    let stillWaiting = replacement >= 0 && poll(&ready, 1, 0) == 1
    print("mode=close backend=\(reactor.name) errors=\(acceptor.errors) first_error=\(errorName(acceptor.firstError))"
          + " closed=\(acceptor.closed) reused_number=\(reusedNumber)"
          + " completions_after_close=\(acceptor.completionsAfterClose) connection_still_waiting=\(stillWaiting)")
    let kept = acceptor.closed && reusedNumber && acceptor.completionsAfterClose == 0 && stillWaiting
    exit(kept ? 0 : 1)
}
