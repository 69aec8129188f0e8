import Testing
@testable import Reactor
import CLinuxShim
#if canImport(Glibc)
@preconcurrency import Glibc
#endif

/// The contract of `ReactorBackend`, checked against every backend over real loopback sockets.
@Suite struct ReactorBackendTests {
    // MARK: accept and connect

    @Test(arguments: backends)
    func acceptTakesEveryConnection(_ backend: Backend) throws {
        let reactor = try makeReactor(backend, exercising: [.accept])
        let (listener, address) = try loopbackListener()
        let waiting = 40, arriving = 24
        var clients = try (0..<waiting).map { _ in try connectedClient(to: address) }
        defer { for client in clients { Glibc.close(client) } }

        // More connections arrive while the accept is armed.
        let latecomers = Recorder()
        latecomers.next = { _, _ in
            for _ in 0..<arriving {
                let fd = try! Sockets.socket(for: address)
                _ = address.withSockaddr { Glibc.connect(fd, $0, $1) }
                clients.append(fd)
            }
        }
        _ = reactor.timer(nanoseconds: 5_000_000, handler: latecomers, tag: 0)

        let acceptor = Recorder()
        acceptor.next = { [unowned reactor] completion, count in
            if completion.result >= 0 { reactor.close(completion.result) }
            if count == waiting + arriving { reactor.stop() }
        }
        reactor.accept(listener, handler: acceptor, tag: 3)
        try runLoop(reactor)
        reactor.close(listener)

        #expect(acceptor.completions.count == waiting + arriving)
        #expect(acceptor.completions.allSatisfy { $0.operation == .accept && $0.tag == 3 && $0.result >= 0 })
    }

    /// Connections that arrived while the process had no descriptor left are accepted once it
    /// has some again, though no new connection comes to wake the listener. In a child process
    /// (`reactor-probe`), which runs out of descriptors under its own low limit.
    @Test(arguments: backends)
    func acceptResumesOnceDescriptorsFreeUp(_ backend: Backend) throws {
        _ = try makeReactor(backend, exercising: [.accept])
        let probe = try runProbe("backlog", backend)

        #expect(probe.status == 0, "\(probe.output)")
        #expect(probe.fields["first_error"] == "EMFILE", "the error is reported to the handler: \(probe.output)")
        #expect(probe.fields["accepted_before_free"] == "0", "\(probe.output)")
        #expect(probe.fields["accepted"] != nil && probe.fields["accepted"] == probe.fields["clients"],
                "every waiting connection is accepted within a second: \(probe.output)")
    }

    /// Closing a listener whose accept rests after EMFILE ends the accept: no completion, and no
    /// retry on the descriptor number, which a new listener took.
    @Test(arguments: backends)
    func closeEndsAnAcceptRestingAfterEMFILE(_ backend: Backend) throws {
        _ = try makeReactor(backend, exercising: [.accept])
        let probe = try runProbe("close", backend)

        #expect(probe.status == 0, "\(probe.output)")
        #expect(probe.fields["first_error"] == "EMFILE", "\(probe.output)")
        #expect(probe.fields["reused_number"] == "true", "the test reuses the number: \(probe.output)")
        #expect(probe.fields["completions_after_close"] == "0", "\(probe.output)")
        #expect(probe.fields["connection_still_waiting"] == "true",
                "the new listener's connection was not taken by the closed one's accept: \(probe.output)")
    }

    @Test(arguments: backends)
    func connectSucceedsOrIsRefused(_ backend: Backend) throws {
        let reactor = try makeReactor(backend, exercising: [.connect])
        let (listener, address) = try loopbackListener()
        defer { Glibc.close(listener) }
        let (holder, nobody) = try refusingPort()
        defer { Glibc.close(holder) }
        let good = try Sockets.socket(for: address)
        let refused = try Sockets.socket(for: nobody)

        let recorder = Recorder()
        recorder.next = { [unowned reactor] _, count in if count == 2 { reactor.stop() } }
        reactor.connect(good, address: address, handler: recorder, tag: 1)
        reactor.connect(refused, address: nobody, handler: recorder, tag: 2)
        try runLoop(reactor)
        reactor.close(good)
        reactor.close(refused)

        let results = Dictionary(uniqueKeysWithValues: recorder.completions.map { ($0.tag, $0.result) })
        #expect(results == [1: 0, 2: -ECONNREFUSED])
        #expect(recorder.completions.allSatisfy { $0.operation == .connect })
    }

    // MARK: receive

    @Test(arguments: backends)
    func receiveDeliversBytesThenEndOfFile(_ backend: Backend) throws {
        let reactor = try makeReactor(backend, exercising: [.receive])
        let baseline = reactor.buffers.inUse
        let (local, peer) = try tcpPair()
        defer { Glibc.close(peer) }
        writeAll(peer, "hello")

        var text = ""
        let recorder = Recorder()
        recorder.next = { [unowned reactor] completion, count in
            if count == 1 {
                if completion.buffer != BufferPool.none {
                    let bytes = UnsafeRawBufferPointer(start: reactor.buffers.pointer(completion.buffer), count: Int(max(completion.result, 0)))
                    text = String(decoding: bytes, as: UTF8.self)
                    reactor.buffers.release(completion.buffer)
                }
                Sockets.shutdownWrite(peer)
                reactor.receive(local, handler: recorder, tag: 8)
            } else {
                reactor.stop()
            }
        }
        reactor.receive(local, handler: recorder, tag: 7)
        try runLoop(reactor)
        reactor.close(local)

        try #require(recorder.completions.count == 2)
        let data = recorder.completions[0], end = recorder.completions[1]
        #expect(data.operation == .receive && data.tag == 7 && data.result == 5)
        #expect(text == "hello")
        #expect(end.operation == .receive && end.tag == 8 && end.result == 0 && end.buffer == BufferPool.none)
        #expect(reactor.buffers.inUse == baseline)
    }

    /// More sockets with data than the io_uring backend keeps buffers in its ring.
    @Test(arguments: backends)
    func receiveOnManySocketsAtOnce(_ backend: Backend) throws {
        let reactor = try makeReactor(backend, exercising: [.receive])
        let baseline = reactor.buffers.inUse
        let connections = UringReactor.bufferRingEntries + 40, size = 1000
        var pairs: [(FileDescriptor, FileDescriptor)] = []
        defer { for (_, peer) in pairs { Glibc.close(peer) } }
        for index in 0..<connections {
            let pair = try tcpPair()
            pairs.append(pair)
            let bytes = pattern(size, seed: index)
            defer { bytes.deallocate() }
            #expect(Glibc.write(pair.1, bytes.baseAddress!, size) == size)
        }

        var intact = 0
        let recorder = Recorder()
        recorder.next = { [unowned reactor] completion, count in
            if completion.result == Int32(size) {
                let expected = pattern(size, seed: Int(completion.tag))
                defer { expected.deallocate() }
                if memcmp(reactor.buffers.pointer(completion.buffer), expected.baseAddress!, size) == 0 { intact += 1 }
            }
            if completion.buffer != BufferPool.none { reactor.buffers.release(completion.buffer) }
            if count == connections { reactor.stop() }
        }
        for (index, pair) in pairs.enumerated() { reactor.receive(pair.0, handler: recorder, tag: UInt32(index)) }
        try runLoop(reactor)
        for (local, _) in pairs { reactor.close(local) }

        #expect(recorder.completions.count == connections)
        #expect(intact == connections)
        #expect(reactor.buffers.inUse == baseline)
    }

    // MARK: read, write, writev

    @Test(arguments: backends)
    func writeAndReadMebibytes(_ backend: Backend) throws {
        let reactor = try makeReactor(backend, exercising: [.read, .write])
        let (sender, receiver) = try tcpPair()
        let total = 3 << 20
        let source = pattern(total), destination = UnsafeMutableRawBufferPointer.allocate(byteCount: total, alignment: 16)
        defer { source.deallocate(); destination.deallocate() }

        var written = 0, writes = 0
        let writer = Recorder()
        writer.next = { [unowned reactor] completion, _ in
            writes += 1
            guard completion.result > 0 else { return reactor.stop() }
            written += Int(completion.result)
            if written < total {
                reactor.write(sender, from: source.baseAddress! + written, count: total - written, handler: writer, tag: 1)
            }
        }
        let reader = ChunkReader(reactor, receiver, into: destination) { reactor.stop() }
        reactor.write(sender, from: source.baseAddress!, count: total, handler: writer, tag: 1)
        reader.start()
        try runLoop(reactor)
        reactor.close(sender)
        reactor.close(receiver)

        #expect(written == total)
        #expect(reader.received == total)
        #expect(memcmp(source.baseAddress!, destination.baseAddress!, total) == 0)
        #expect(writer.completions.allSatisfy { $0.operation == .write && $0.tag == 1 })
        #expect(reader.completions.allSatisfy { $0.operation == .read })
    }

    @Test(arguments: backends)
    func writevAndReadMebibytes(_ backend: Backend) throws {
        let reactor = try makeReactor(backend, exercising: [.read, .writev])
        let (sender, receiver) = try tcpPair()
        let segment = 1 << 20, segments = 3, total = segment * segments
        let parts = (0..<segments).map { pattern(segment, seed: $0 * 17) }
        let destination = UnsafeMutableRawBufferPointer.allocate(byteCount: total, alignment: 16)
        let vectors = UnsafeMutablePointer<iovec>.allocate(capacity: segments)
        defer {
            for part in parts { part.deallocate() }
            destination.deallocate()
            vectors.deallocate()
        }
        for (index, part) in parts.enumerated() { vectors[index] = iovec(iov_base: part.baseAddress, iov_len: segment) }

        var first = 0, written = 0
        let writer = Recorder()
        writer.next = { [unowned reactor] completion, _ in
            guard completion.result > 0 else { return reactor.stop() }
            written += Int(completion.result)
            // Step over what went out: whole vectors, then into the one it stopped in.
            var left = Int(completion.result)
            while left > 0 {
                let length = vectors[first].iov_len
                if left >= length {
                    left -= length
                    first += 1
                } else {
                    vectors[first].iov_base += left
                    vectors[first].iov_len -= left
                    left = 0
                }
            }
            if first < segments {
                reactor.writev(sender, vectors: vectors + first, count: segments - first, handler: writer, tag: 2)
            }
        }
        let reader = ChunkReader(reactor, receiver, into: destination) { reactor.stop() }
        reactor.writev(sender, vectors: vectors, count: segments, handler: writer, tag: 2)
        reader.start()
        try runLoop(reactor)
        reactor.close(sender)
        reactor.close(receiver)

        #expect(written == total)
        #expect(reader.received == total)
        for (index, part) in parts.enumerated() {
            #expect(memcmp(part.baseAddress!, destination.baseAddress! + index * segment, segment) == 0)
        }
        #expect(writer.completions.allSatisfy { $0.operation == .writev && $0.tag == 2 })
    }

    /// How the commands learn of SIGINT and SIGTERM: a signalfd read like any descriptor.
    @Test(arguments: backends)
    func readTakesASignalFromASignalfd(_ backend: Backend) throws {
        let reactor = try makeReactor(backend, exercising: [.read])
        var blocked = sigset_t()
        sigemptyset(&blocked)
        sigaddset(&blocked, SIGURG)
        var signals: [Int32] = [SIGURG]
        let fd = pf_signalfd(&signals, 1)
        try #require(fd >= 0)
        let info = UnsafeMutableRawPointer.allocate(byteCount: 128, alignment: 8)
        defer {
            reactor.close(fd)
            info.deallocate()
            pthread_sigmask(SIG_UNBLOCK, &blocked, nil)
        }
        let reader = Recorder()
        reader.next = { [unowned reactor] _, _ in reactor.stop() }
        let sender = Recorder()
        // To this thread, which has the signal blocked and runs the loop.
        sender.next = { _, _ in _ = pthread_kill(pthread_self(), SIGURG) }
        reactor.read(fd, into: info, count: 128, handler: reader, tag: 1)
        _ = reactor.timer(nanoseconds: 10_000_000, handler: sender, tag: 0)
        try runLoop(reactor)

        #expect(reader.completions.map(\.result) == [128])
        #expect(info.load(as: UInt32.self) == UInt32(SIGURG))
    }

    // MARK: splice

    @Test(arguments: backends)
    func spliceSocketToPipeToSocket(_ backend: Backend) throws {
        let reactor = try makeReactor(backend, exercising: [.splice, .read, .write])
        let (sender, relayIn) = try tcpPair()
        let (relayOut, receiver) = try tcpPair()
        var pipe: [Int32] = [-1, -1]
        try #require(pf_pipe2(&pipe) == 0)
        let total = 2 << 20, chunk = 64 * 1024
        let source = pattern(total, seed: 5), destination = UnsafeMutableRawBufferPointer.allocate(byteCount: total, alignment: 16)
        defer { source.deallocate(); destination.deallocate() }

        var written = 0
        let writer = Recorder()
        writer.next = { [unowned reactor] completion, _ in
            guard completion.result > 0 else { return reactor.stop() }
            written += Int(completion.result)
            if written < total {
                reactor.write(sender, from: source.baseAddress! + written, count: total - written, handler: writer, tag: 1)
            }
        }

        // Socket -> pipe, then drain the pipe into the other socket before taking more.
        var inPipe = 0, relayed = 0, failures: [Completion] = []
        let relay = Recorder()
        relay.next = { [unowned reactor] completion, _ in
            guard completion.result > 0 else {
                failures.append(completion)
                return reactor.stop()
            }
            if completion.tag == 10 {
                inPipe = Int(completion.result)
            } else {
                inPipe -= Int(completion.result)
                relayed += Int(completion.result)
            }
            if inPipe > 0 {
                reactor.splice(from: pipe[0], to: relayOut, count: inPipe, socket: relayOut, handler: relay, tag: 11)
            } else if relayed < total {
                reactor.splice(from: relayIn, to: pipe[1], count: chunk, socket: relayIn, handler: relay, tag: 10)
            }
        }
        let reader = ChunkReader(reactor, receiver, into: destination) { reactor.stop() }
        reactor.splice(from: relayIn, to: pipe[1], count: chunk, socket: relayIn, handler: relay, tag: 10)
        reader.start()
        reactor.write(sender, from: source.baseAddress!, count: total, handler: writer, tag: 1)
        try runLoop(reactor)
        for fd in [sender, relayIn, relayOut, receiver, pipe[0], pipe[1]] { reactor.close(fd) }

        #expect(failures.isEmpty)
        #expect(relayed == total)
        #expect(reader.received == total)
        #expect(memcmp(source.baseAddress!, destination.baseAddress!, total) == 0)
        #expect(relay.completions.allSatisfy { $0.operation == .splice })
    }

    // MARK: poll

    @Test(arguments: backends)
    func pollReadableWaitsForData(_ backend: Backend) throws {
        let reactor = try makeReactor(backend, exercising: [.poll])
        let (local, peer) = try tcpPair()
        defer { Glibc.close(peer) }
        let log = Log()

        let sender = Recorder()
        sender.next = { _, _ in
            log.add("send")
            writeAll(peer, "x")
        }
        let poller = Recorder()
        poller.next = { [unowned reactor] completion, count in
            log.add("poll \(completion.result)")
            // Still readable: nothing consumed the byte.
            if count == 1 { reactor.pollReadable(local, handler: poller, tag: 2) } else { reactor.stop() }
        }
        reactor.pollReadable(local, handler: poller, tag: 1)
        _ = reactor.timer(nanoseconds: 30_000_000, handler: sender, tag: 0)
        try runLoop(reactor)
        reactor.close(local)

        #expect(log.entries == ["send", "poll 0", "poll 0"])
        #expect(poller.completions.map(\.tag) == [1, 2])
        #expect(poller.completions.allSatisfy { $0.operation == .poll })
    }

    // MARK: timers

    @Test(arguments: backends)
    func timersFireInOrderAndCancel(_ backend: Backend) throws {
        let reactor = try makeReactor(backend, exercising: [])
        let start = Clock.nanoseconds()
        var fired: [(tag: UInt32, at: UInt64)] = []
        let milliseconds: UInt64 = 1_000_000
        var cancelledInLoop: TimerID = 0
        let recorder = Recorder()
        recorder.next = { [unowned reactor] completion, _ in
            fired.append((completion.tag, Clock.nanoseconds() - start))
            if completion.tag == 10 { reactor.cancelTimer(cancelledInLoop) }
            if completion.tag == 40 { reactor.stop() }
        }
        _ = reactor.timer(nanoseconds: 30 * milliseconds, handler: recorder, tag: 30)
        _ = reactor.timer(nanoseconds: 10 * milliseconds, handler: recorder, tag: 10)
        _ = reactor.timer(nanoseconds: 20 * milliseconds, handler: recorder, tag: 20)
        reactor.cancelTimer(reactor.timer(nanoseconds: 15 * milliseconds, handler: recorder, tag: 15))
        cancelledInLoop = reactor.timer(nanoseconds: 25 * milliseconds, handler: recorder, tag: 25)
        _ = reactor.timer(nanoseconds: 40 * milliseconds, handler: recorder, tag: 40)
        try runLoop(reactor)

        #expect(fired.map(\.tag) == [10, 20, 30, 40])
        #expect(fired.allSatisfy { $0.at >= UInt64($0.tag) * milliseconds })
        #expect(recorder.completions.allSatisfy { $0.operation == .timer && $0.result == 0 })
    }

    /// Two timers fall due in the same turn and the first cancels the second: the second is not
    /// delivered (a handler that cancels its timer must not hear from it again).
    @Test(arguments: backends)
    func timerCancelledAfterFallingDueIsNotDelivered(_ backend: Backend) throws {
        let reactor = try makeReactor(backend, exercising: [])
        var second: TimerID = 0
        let recorder = Recorder()
        recorder.next = { [unowned reactor] completion, _ in
            if completion.tag == 1 { reactor.cancelTimer(second) }
            if completion.tag == 3 { reactor.stop() }
        }
        _ = reactor.timer(nanoseconds: 1_000_000, handler: recorder, tag: 1)
        second = reactor.timer(nanoseconds: 2_000_000, handler: recorder, tag: 2)
        _ = reactor.timer(nanoseconds: 30_000_000, handler: recorder, tag: 3)
        // Both are due before the loop first looks.
        usleep(10_000)
        try runLoop(reactor)
        #expect(recorder.completions.map(\.tag) == [1, 3])
    }

    /// A handler that issues its next receive on every completion, on a socket that has far more
    /// than one buffer waiting, does not keep the loop to itself: a timer due meanwhile fires
    /// before that socket runs dry (the epoll backend completes such receives inline).
    @Test(arguments: backends)
    func aSocketThatNeverRunsDryDoesNotStarveTheLoop(_ backend: Backend) throws {
        let reactor = try makeReactor(backend, exercising: [.receive], bufferSize: 16 * 1024)
        let (writer, reader) = try tcpPair()
        defer { Glibc.close(writer) }
        // Fill the connection: a few MiB wait in the socket buffers, hundreds of receives' worth.
        let chunk = pattern(64 * 1024)
        defer { chunk.deallocate() }
        var queued = 0
        while queued < 8 << 20 {
            let written = Glibc.write(writer, chunk.baseAddress!, chunk.count)
            if written <= 0 { break }
            queued += written
        }
        let receiver = Recorder()
        var received = 0
        var receivedWhenTimerFired = -1
        receiver.next = { [unowned reactor] completion, _ in
            if completion.buffer != BufferPool.none { reactor.buffers.release(completion.buffer) }
            received += Int(max(completion.result, 0))
            if received >= queued || completion.result <= 0 { reactor.stop(); return }
            reactor.receive(reader, handler: receiver, tag: 1)
        }
        let timer = Recorder()
        timer.next = { _, _ in receivedWhenTimerFired = received }
        _ = reactor.timer(nanoseconds: 0, handler: timer, tag: 2)
        reactor.receive(reader, handler: receiver, tag: 1)
        try runLoop(reactor)
        reactor.close(reader)
        #expect(queued > 1 << 20, "only \(queued) bytes could be queued")
        #expect(receivedWhenTimerFired >= 0 && receivedWhenTimerFired < queued / 2,
                "the timer fired after \(receivedWhenTimerFired) of \(queued) bytes")
    }

    // MARK: close

    @Test(arguments: backends)
    func closeCancelsPendingReceiveWithoutCompletion(_ backend: Backend) throws {
        let reactor = try makeReactor(backend, exercising: [.receive])
        let baseline = reactor.buffers.inUse
        let (quiet, quietPeer) = try tcpPair()
        let (racing, racingPeer) = try tcpPair()
        defer { Glibc.close(quietPeer); Glibc.close(racingPeer) }

        let silent = Recorder()
        weak var released: Recorder?
        do {
            let dropped = Recorder()
            released = dropped
            reactor.receive(quiet, handler: dropped, tag: 1)
        }
        reactor.receive(racing, handler: silent, tag: 2)

        let closer = Recorder()
        closer.next = { [unowned reactor] completion, _ in
            if completion.tag == 1 {
                reactor.close(quiet)
                // Bytes on their way while the receive is cancelled: still no completion.
                writeAll(racingPeer, "late")
                reactor.close(racing)
            } else {
                reactor.stop()
            }
        }
        _ = reactor.timer(nanoseconds: 10_000_000, handler: closer, tag: 1)
        _ = reactor.timer(nanoseconds: 40_000_000, handler: closer, tag: 2)
        try runLoop(reactor)

        #expect(silent.completions.isEmpty)
        #expect(released == nil, "the handler of a cancelled operation is let go once the kernel is done")
        #expect(readOnce(quietPeer) == 0, "the peer sees the close")
        #expect(reactor.buffers.inUse == baseline)
    }

    @Test(arguments: backends)
    func closeStopsAccepting(_ backend: Backend) throws {
        let reactor = try makeReactor(backend, exercising: [.accept])
        let (listener, address) = try loopbackListener()
        let acceptor = Recorder()
        reactor.accept(listener, handler: acceptor, tag: 1)
        let closer = Recorder()
        closer.next = { [unowned reactor] completion, _ in
            if completion.tag == 1 { reactor.close(listener) } else { reactor.stop() }
        }
        _ = reactor.timer(nanoseconds: 10_000_000, handler: closer, tag: 1)
        _ = reactor.timer(nanoseconds: 30_000_000, handler: closer, tag: 2)
        try runLoop(reactor)

        #expect(acceptor.completions.isEmpty)
        #expect(throws: SystemError.self, "the listening socket is gone") {
            Glibc.close(try connectedClient(to: address))
        }
    }

    @Test(arguments: backends)
    func closeOutsideTheLoopTakesEffectAtOnce(_ backend: Backend) throws {
        let reactor = try makeReactor(backend, exercising: [.receive])
        let (first, earlyPeer) = try tcpPair()
        let (other, otherPeer) = try tcpPair()
        let (late, latePeer) = try tcpPair()
        // A number far above what other tests use (and apart from the other cases of this one),
        // so it can be reused on purpose below.
        let range = 4000 + 100 * (backends.firstIndex { $0.testDescription == backend.testDescription } ?? 0)
        let early = fcntl(first, F_DUPFD, Int32(range))
        Glibc.close(first)
        defer { for fd in [earlyPeer, other, otherPeer, latePeer] { Glibc.close(fd) } }
        let recorder = Recorder()

        // Before the loop ever ran. Then the number names another socket: the cancelled receive
        // must not reach it.
        reactor.receive(early, handler: recorder, tag: 1)
        reactor.close(early)
        #expect(readOnce(earlyPeer) == 0)
        writeAll(otherPeer, "mine")
        #expect(dup2(other, early) == early)
        try runBriefly(reactor)
        #expect(readOnce(early) == 4, "the bytes are still there for their owner")
        Glibc.close(early)

        // Between two runs, with the receive in the kernel.
        reactor.receive(late, handler: recorder, tag: 2)
        try runBriefly(reactor)
        reactor.close(late)
        #expect(readOnce(latePeer) == 0)
        try runBriefly(reactor)
        #expect(recorder.completions.isEmpty)
    }

    /// A write the peer does not read and a receive it does not feed are in the kernel (io_uring)
    /// when the socket is closed: `quiet` waits for the completions of their cancellation, so
    /// the memory the write reads from can go back then and not before. On epoll nothing of ours
    /// is in the kernel, and `quiet` runs inside `close`.
    @Test(arguments: backends)
    func closeCallsQuietOnceTheCancelledRequestsHaveCompleted(_ backend: Backend) throws {
        let reactor = try makeReactor(backend, exercising: [.write, .receive])
        let (local, peer) = try tcpPair()
        defer { Glibc.close(peer) }
        let chunk = pattern(256 * 1024)
        defer { chunk.deallocate() }
        fillSendBuffer(local, peer)
        let uring = reactor as? UringReactor
        let log = Log()
        var slotsAfterClose = -1, slotsAtQuiet = -1, quietCalls = 0

        let pending = Recorder()
        reactor.write(local, from: chunk.baseAddress!, count: chunk.count, handler: pending, tag: 1)
        reactor.receive(local, handler: pending, tag: 2)
        let closer = Recorder()
        closer.next = { [unowned reactor] completion, _ in
            if completion.tag == 2 { return reactor.stop() }
            reactor.close(local) {
                quietCalls += 1
                slotsAtQuiet = uring?.live ?? 0
                log.add("quiet")
            }
            slotsAfterClose = uring?.live ?? 0
            log.add("closed")
        }
        _ = reactor.timer(nanoseconds: 20_000_000, handler: closer, tag: 1)
        _ = reactor.timer(nanoseconds: 60_000_000, handler: closer, tag: 2)
        try runLoop(reactor)

        #expect(pending.completions.isEmpty, "a cancelled request completes to nobody")
        #expect(quietCalls == 1)
        if uring != nil {
            #expect(log.entries == ["closed", "quiet"], "not inside close: both requests were in the kernel")
            #expect(slotsAfterClose == 2, "the cancelled requests wait for their last completion")
            #expect(slotsAtQuiet == 0, "quiet comes after the last of them")
        } else {
            #expect(log.entries == ["quiet", "closed"])
        }
        #expect(readOnce(peer) > 0, "the bytes written before the close still arrive")
    }

    /// Nothing in the kernel: before the loop ever ran (the requests are withdrawn), and on a
    /// descriptor with nothing pending. `quiet` runs at once on every backend.
    @Test(arguments: backends)
    func closeCallsQuietAtOnceWhenNothingIsPending(_ backend: Backend) throws {
        let reactor = try makeReactor(backend, exercising: [.write, .receive])
        let (withdrawn, withdrawnPeer) = try tcpPair()
        let (idle, idlePeer) = try tcpPair()
        defer { Glibc.close(withdrawnPeer); Glibc.close(idlePeer) }
        fillSendBuffer(withdrawn, withdrawnPeer)
        let chunk = pattern(64 * 1024)
        defer { chunk.deallocate() }
        let pending = Recorder()
        var calls: [String] = []

        reactor.write(withdrawn, from: chunk.baseAddress!, count: chunk.count, handler: pending, tag: 1)
        reactor.receive(withdrawn, handler: pending, tag: 2)
        reactor.close(withdrawn) { calls.append("withdrawn") }
        #expect(calls == ["withdrawn"])
        reactor.close(idle) { calls.append("idle") }
        #expect(calls == ["withdrawn", "idle"])
        try runBriefly(reactor)

        #expect(calls == ["withdrawn", "idle"], "once each")
        #expect(pending.completions.isEmpty)
        #expect(readOnce(idlePeer) == 0)
    }

    @Test(arguments: backends)
    func droppingTheReactorLetsGoOfPendingOperations(_ backend: Backend) throws {
        let (local, peer) = try tcpPair()
        defer { Glibc.close(local); Glibc.close(peer) }
        weak var handler: Recorder?
        weak var dropped: ReactorBackend?
        do {
            let reactor = try makeReactor(backend, exercising: [.receive])
            let recorder = Recorder()
            reactor.receive(local, handler: recorder, tag: 1)
            try runBriefly(reactor)
            handler = recorder
            dropped = reactor
        }
        #expect(dropped == nil)
        #expect(handler == nil)
    }

    // MARK: deferred tasks

    @Test(arguments: backends)
    func deferredTasksRunAfterTheCompletionsOfTheirTurn(_ backend: Backend) throws {
        let reactor = try makeReactor(backend, exercising: [.poll])
        let (first, firstPeer) = try tcpPair()
        let (second, secondPeer) = try tcpPair()
        defer { for fd in [first, second, firstPeer, secondPeer] { reactor.close(fd) } }
        writeAll(firstPeer, "1")
        writeAll(secondPeer, "2")
        let log = Log()

        let last = Deferred { [unowned reactor] in
            log.add("C")
            reactor.stop()
        }
        let after = Deferred { [unowned reactor] in
            log.add("B")
            reactor.schedule(last)
        }
        let recorder = Recorder()
        recorder.next = { [unowned reactor] completion, _ in
            log.add("poll \(completion.tag)")
            if completion.tag == 1 { reactor.schedule(after) }
        }
        reactor.schedule(Deferred { log.add("A") })
        reactor.pollReadable(first, handler: recorder, tag: 1)
        reactor.pollReadable(second, handler: recorder, tag: 2)
        try runLoop(reactor)

        let entries = log.entries
        #expect(entries.count == 5)
        #expect(entries.contains("A"))
        let order = ["poll 1", "poll 2", "B", "C"].map { entries.firstIndex(of: $0) ?? -1 }
        #expect(order.allSatisfy { $0 >= 0 } && order == order.sorted(), "\(entries)")
    }
}

/// Reads `destination.count` bytes from `fd` in chunks of at most 64 KiB.
final class ChunkReader: CompletionHandler {
    unowned let reactor: ReactorBackend
    let fd: FileDescriptor
    let destination: UnsafeMutableRawBufferPointer
    let done: () -> Void
    var received = 0
    var completions: [Completion] = []

    init(_ reactor: ReactorBackend, _ fd: FileDescriptor, into destination: UnsafeMutableRawBufferPointer, done: @escaping () -> Void) {
        self.reactor = reactor
        self.fd = fd
        self.destination = destination
        self.done = done
    }

    func start() {
        reactor.read(fd, into: destination.baseAddress! + received, count: min(64 * 1024, destination.count - received),
                     handler: self, tag: 9)
    }

    func complete(_ completion: Completion) {
        completions.append(completion)
        guard completion.result > 0 else { return done() }
        received += Int(completion.result)
        if received < destination.count { start() } else { done() }
    }
}
