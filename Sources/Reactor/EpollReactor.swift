import CLinuxShim
#if canImport(Glibc)
@preconcurrency import Glibc
#endif

/// The readiness backend: each descriptor is registered once, edge-triggered, for both
/// directions. An operation is tried at once; if the kernel says EAGAIN it waits in the
/// descriptor's slot (one reader, one writer) until epoll reports the descriptor ready.
public final class EpollReactor: ReactorBackend {
    struct Pending {
        var request: Request
        var handler: CompletionHandler
        var tag: UInt32
    }

    struct Slot {
        var registered = false
        var reader: Pending?
        var writer: Pending?
        /// An accept resting after a resource error (0: none): it is not attempted until the
        /// timer wakes it, as the edge that would wake it may never come.
        var restTimer: TimerID = 0
        /// epoll reported the descriptor readable (or ended) and no read has said EAGAIN since:
        /// an edge that came while no reader waited is remembered here, not probed for with
        /// poll() on the next `pollReadable`.
        var mayRead = false
    }

    public let name = "epoll"
    public let buffers: BufferPool
    private let epoll: FileDescriptor
    private var slots: [Slot] = []
    private let core = LoopCore()
    private let events: UnsafeMutablePointer<pf_epoll_event>
    private let eventCapacity = 256
    private lazy var acceptRest = AcceptRest { [unowned self] in wake(FileDescriptor(bitPattern: $0)) }

    public init(bufferSize: Int = BufferPool.defaultBufferSize) throws {
        epoll = try check("epoll_create1") { pf_epoll_create() }
        buffers = BufferPool(bufferSize: bufferSize)
        events = .allocate(capacity: eventCapacity)
        slots = Array(repeating: Slot(), count: 1024)
    }

    deinit {
        events.deallocate()
        Glibc.close(epoll)
    }

    // MARK: operations

    public func accept(_ fd: FileDescriptor, handler: CompletionHandler, tag: UInt32) {
        submitReader(fd, Pending(request: .accept(fd), handler: handler, tag: tag))
    }

    public func connect(_ fd: FileDescriptor, address: SocketAddress, handler: CompletionHandler, tag: UInt32) {
        let result = address.withSockaddr { Glibc.connect(fd, $0, $1) }
        if result == 0 {
            core.post(handler, Completion(operation: .connect, tag: tag, result: 0))
            return
        }
        let code = pf_errno()
        if code != EINPROGRESS && code != EAGAIN && code != EINTR {
            core.post(handler, Completion(operation: .connect, tag: tag, result: -code))
            return
        }
        register(fd)
        slots[Int(fd)].writer = Pending(request: .connect(fd, addressLength: address.length), handler: handler, tag: tag)
    }

    public func receive(_ fd: FileDescriptor, handler: CompletionHandler, tag: UInt32) {
        submitReader(fd, Pending(request: .receive(fd), handler: handler, tag: tag))
    }

    public func read(_ fd: FileDescriptor, into buffer: UnsafeMutableRawPointer, count: Int, handler: CompletionHandler, tag: UInt32) {
        submitReader(fd, Pending(request: .read(fd, into: buffer, count: count), handler: handler, tag: tag))
    }

    public func write(_ fd: FileDescriptor, from buffer: UnsafeRawPointer, count: Int, handler: CompletionHandler, tag: UInt32) {
        submitWriter(fd, Pending(request: .write(fd, from: buffer, count: count), handler: handler, tag: tag))
    }

    public func writev(_ fd: FileDescriptor, vectors: UnsafePointer<iovec>, count: Int, handler: CompletionHandler, tag: UInt32) {
        submitWriter(fd, Pending(request: .writev(fd, vectors: vectors, count: count), handler: handler, tag: tag))
    }

    public func splice(from source: FileDescriptor, to destination: FileDescriptor, count: Int, socket: FileDescriptor,
                       handler: CompletionHandler, tag: UInt32) {
        let request = Request.splice(from: source, to: destination, count: count, socket: socket)
        let pending = Pending(request: request, handler: handler, tag: tag)
        if request.writes { submitWriter(socket, pending) } else { submitReader(socket, pending) }
    }

    public func pollReadable(_ fd: FileDescriptor, handler: CompletionHandler, tag: UInt32) {
        register(fd)
        slots[Int(fd)].reader = Pending(request: .poll(fd), handler: handler, tag: tag)
        // Edge-triggered: an edge that came before is not reported again, but it was remembered
        // (a descriptor just registered has its present readiness reported by epoll_ctl itself).
        if slots[Int(fd)].mayRead { attemptReader(fd) }
    }

    public func timer(nanoseconds: UInt64, handler: CompletionHandler, tag: UInt32) -> TimerID {
        core.timers.add(after: nanoseconds, handler: handler, tag: tag)
    }

    public func cancelTimer(_ id: TimerID) { core.timers.cancel(id) }

    public func close(_ fd: FileDescriptor) {
        guard fd >= 0 else { return }
        if Int(fd) < slots.count {
            if slots[Int(fd)].restTimer != 0 { core.timers.cancel(slots[Int(fd)].restTimer) }
            slots[Int(fd)] = Slot()
        }
        Glibc.close(fd)
    }

    /// `quiet` runs at once, inside `close`: every operation of this backend is a system call
    /// the loop makes itself, so once `close` has cleared the descriptor's slot nothing will
    /// touch the memory of an operation on `fd` again (the kernel never holds a pointer of ours).
    public func close(_ fd: FileDescriptor, quiet: @escaping () -> Void) {
        close(fd)
        quiet()
    }

    public func spliceNow(from source: FileDescriptor, to destination: FileDescriptor, count: Int) -> Int {
        let moved = pf_splice(source, destination, count, pf_splice_move | pf_splice_nonblock)
        if moved >= 0 { return moved }
        let code = pf_errno()
        // The callers splice a socket into an emptied pipe: EAGAIN says the socket has nothing,
        // so the next `pollReadable` waits for an edge instead of trying at once.
        if code == EAGAIN && Int(source) < slots.count { slots[Int(source)].mayRead = false }
        return -Int(code)
    }

    public func schedule(_ task: DeferredTask) { core.addDeferred(task) }

    public func stop() { core.stopped = true }

    // MARK: the loop

    public func run() throws {
        core.stopped = false
        while !core.stopped {
            core.drain()
            if core.stopped { break }
            let count = pf_epoll_wait(epoll, events, Int32(eventCapacity), core.timeoutMilliseconds())
            if count < 0 {
                if pf_errno() == EINTR { continue }
                throw SystemError("epoll_wait")
            }
            for index in 0..<Int(count) {
                let event = events[index]
                let fd = FileDescriptor(truncatingIfNeeded: event.data)
                if event.events & (pf_epollin | pf_epollerr | pf_epollhup | pf_epollrdhup) != 0 {
                    if Int(fd) < slots.count { slots[Int(fd)].mayRead = true }
                    attemptReader(fd)
                }
                if event.events & (pf_epollout | pf_epollerr | pf_epollhup) != 0 {
                    attemptWriter(fd, failed: event.events & (pf_epollerr | pf_epollhup) != 0)
                }
            }
            core.fireTimers()
        }
    }

    // MARK: internals

    private func register(_ fd: FileDescriptor) {
        let index = Int(fd)
        if index >= slots.count {
            slots.append(contentsOf: repeatElement(Slot(), count: max(index + 1 - slots.count, slots.count)))
        }
        if slots[index].registered { return }
        slots[index].registered = true
        if pf_epoll_ctl(epoll, pf_epoll_ctl_add, fd, pf_epollin | pf_epollout | pf_epollrdhup | pf_epollet, UInt64(UInt32(bitPattern: fd))) != 0 {
            // Regular files and some special files cannot be polled: they are always ready.
            slots[index].registered = pf_errno() != EPERM
        }
    }

    private func submitReader(_ fd: FileDescriptor, _ pending: Pending) {
        register(fd)
        slots[Int(fd)].reader = pending
        attemptReader(fd)
    }

    private func submitWriter(_ fd: FileDescriptor, _ pending: Pending) {
        register(fd)
        slots[Int(fd)].writer = pending
        attemptWriter(fd)
    }

    private func attemptReader(_ fd: FileDescriptor) {
        let index = Int(fd)
        guard index < slots.count, let pending = slots[index].reader else { return }
        switch pending.request {
        case .accept:
            if slots[index].restTimer != 0 { return }
            // Take every waiting connection; the slot stays armed for the next ones.
            while true {
                let client = pf_accept4(fd, nil, nil)
                if client >= 0 {
                    core.post(pending.handler, Completion(operation: .accept, tag: pending.tag, result: client))
                    continue
                }
                let code = pf_errno()
                if code == EAGAIN { slots[index].mayRead = false; return }
                if LoopCore.acceptSkips(after: code) { continue }
                core.post(pending.handler, Completion(operation: .accept, tag: pending.tag, result: -code))
                if LoopCore.acceptRests(after: code) {
                    // The connections still waiting raise no new edge: only a retry takes them.
                    slots[index].restTimer = core.timers.add(after: LoopCore.acceptRestNanoseconds, handler: acceptRest,
                                                             tag: UInt32(bitPattern: fd))
                }
                return
            }
        case .poll:
            slots[index].reader = nil
            core.post(pending.handler, Completion(operation: .poll, tag: pending.tag, result: 0))
        case .receive:
            let buffer = buffers.take()
            let result = Glibc.read(fd, buffers.pointer(buffer), buffers.bufferSize)
            let code = result < 0 ? pf_errno() : 0
            if code == EAGAIN || code == EINTR {
                if code == EAGAIN { slots[index].mayRead = false }
                buffers.release(buffer)
                return
            }
            slots[index].reader = nil
            if result <= 0 {
                buffers.release(buffer)
                core.post(pending.handler, Completion(operation: .receive, tag: pending.tag, result: -code))
            } else {
                core.post(pending.handler, Completion(operation: .receive, tag: pending.tag, result: Int32(result), buffer: buffer))
            }
        case .read(_, let pointer, let count):
            let result = Glibc.read(fd, pointer, count)
            finish(reader: true, index, pending, result)
        case .splice(let source, let destination, let count, _):
            let result = pf_splice(source, destination, count, pf_splice_move | pf_splice_nonblock)
            finish(reader: true, index, pending, result)
        case .connect, .write, .writev:
            return
        }
    }

    /// Called by the rest timer of an accept. `close` clears the slot's rest, so a timer that
    /// fired just before the close wakes nothing.
    private func wake(_ fd: FileDescriptor) {
        guard Int(fd) < slots.count, slots[Int(fd)].restTimer != 0 else { return }
        slots[Int(fd)].restTimer = 0
        attemptReader(fd)
    }

    /// `failed`: epoll said EPOLLERR or EPOLLHUP (false from an event without them: a connect is
    /// then complete without asking SO_ERROR).
    private func attemptWriter(_ fd: FileDescriptor, failed: Bool = true) {
        let index = Int(fd)
        guard index < slots.count, let pending = slots[index].writer else { return }
        let result: Int
        switch pending.request {
        case .connect:
            slots[index].writer = nil
            // Writable without an error: connected. Otherwise SO_ERROR says why not.
            let code = failed ? Sockets.socketError(fd) : 0
            core.post(pending.handler, Completion(operation: .connect, tag: pending.tag, result: -code))
            return
        case .write(_, let pointer, let count):
            result = Glibc.write(fd, pointer, count)
        case .writev(_, let vectors, let count):
            result = Glibc.writev(fd, vectors, Int32(count))
        case .splice(let source, let destination, let count, _):
            result = pf_splice(source, destination, count, pf_splice_move | pf_splice_nonblock)
        case .accept, .receive, .read, .poll:
            return
        }
        finish(reader: false, index, pending, result)
    }

    @inline(__always)
    private func finish(reader: Bool, _ index: Int, _ pending: Pending, _ result: Int) {
        if result < 0 {
            let code = pf_errno()
            if code == EAGAIN || code == EINTR {
                if reader && code == EAGAIN { slots[index].mayRead = false }
                return
            }
            if reader { slots[index].reader = nil } else { slots[index].writer = nil }
            core.post(pending.handler, Completion(operation: pending.request.operation, tag: pending.tag, result: -code))
            return
        }
        if reader { slots[index].reader = nil } else { slots[index].writer = nil }
        core.post(pending.handler, Completion(operation: pending.request.operation, tag: pending.tag,
                                              result: Int32(truncatingIfNeeded: result)))
    }
}
