import Testing
@_spi(Testing) @testable import Reactor
import CLinuxShim
import Foundation
#if canImport(Glibc)
@preconcurrency import Glibc
#endif

/// What only the io_uring backend has: the choice `auto` makes, and a ring that belongs to the
/// thread that runs it rather than the one that built it.
@Suite struct UringReactorTests {
    static let available = (try? UringReactor()) != nil

    @Test func autoTakesIoUringWhenARingCanBeSetUp() throws {
        let reactor = try Reactors.make(.auto)
        #expect(reactor.name == (Self.available ? "io_uring" : "epoll"))
    }

    @Test func theReactorPicksTheBestRingSetUp() throws {
        guard let reactor = try? UringReactor() else { try skip("io_uring unavailable") }
        #expect(UringReactor.setups.contains(reactor.setupFlags))
    }

    /// Operations are queued and a descriptor closed on the thread that built the reactor; the
    /// ring belongs to the thread that runs it.
    @Test(.enabled(if: available, "io_uring unavailable"))
    func runsOnAnotherThreadThanTheOneThatBuiltIt() throws {
        let reactor = try UringReactor(bufferSize: 4096)
        let (closed, closedPeer) = try tcpPair()
        let (local, peer) = try tcpPair()
        defer { Glibc.close(peer); Glibc.close(closedPeer) }
        writeAll(closedPeer, "never")
        writeAll(peer, "ping")
        let recorder = Recorder()
        recorder.next = { [unowned reactor] completion, _ in
            if completion.buffer != BufferPool.none { reactor.buffers.release(completion.buffer) }
            reactor.stop()
        }
        reactor.receive(closed, handler: recorder, tag: 1)
        reactor.receive(local, handler: recorder, tag: 2)
        reactor.close(closed)

        let box = UncheckedBox(reactor)
        let finished = DispatchSemaphore(value: 0)
        let thread = Thread {
            box.error = Result { try runLoop(box.value, milliseconds: 2000) }.failure
            box.value.close(local)
            finished.signal()
        }
        thread.start()
        finished.wait()
        #expect(box.error == nil)
        #expect(recorder.completions.map(\.tag) == [2])
        #expect(recorder.completions.map(\.result) == [4])
    }
}

final class UncheckedBox: @unchecked Sendable {
    let value: UringReactor
    var error: (any Error)?
    init(_ value: UringReactor) { self.value = value }
}

extension Result {
    var failure: Failure? {
        if case .failure(let error) = self { return error }
        return nil
    }
}
