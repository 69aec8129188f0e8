import CLinuxShim
#if canImport(Glibc)
@preconcurrency import Glibc
#endif

/// Signals taken as events of the loop: a signalfd read through the reactor, so a handler runs
/// between completions like any other, never inside a signal handler. The signals are blocked
/// (the only way a signalfd sees them) once the signalfd exists; if it cannot be made, `init`
/// throws and they keep their default action, so Ctrl-C still ends the process.
///
/// Block the signals in the thread that makes the watcher before starting any other thread, or
/// those threads may take them instead.
public final class SignalWatcher: CompletionHandler {
    private let reactor: ReactorBackend
    private let fd: FileDescriptor
    private let onSignal: (Int32) -> Void
    /// One `signalfd_siginfo`: the kernel fills it, so it stays until this object goes, which
    /// is after the reactor has let go of the pending read.
    private let information = UnsafeMutableRawPointer.allocate(byteCount: SignalWatcher.informationSize, alignment: 8)
    private static let informationSize = 128
    private var stopped = false

    /// Watches `signals` and calls `onSignal` with the number of each one that arrives.
    public init(_ signals: [Int32], reactor: ReactorBackend, onSignal: @escaping (Int32) -> Void) throws {
        var signals = signals
        let fd = pf_signalfd(&signals, Int32(signals.count))
        if fd < 0 {
            information.deallocate()
            throw SystemError("signalfd", errno: -fd)
        }
        self.fd = fd
        self.reactor = reactor
        self.onSignal = onSignal
        readNext()
    }

    deinit { information.deallocate() }

    /// Closes the signalfd; no more calls. The signals stay blocked: unblocking them would hand a
    /// signal that came meanwhile to its default action, ending the process in the middle of an
    /// orderly stop. (A caller that wants the default action back restores its mask itself.)
    public func stop() {
        if stopped { return }
        stopped = true
        reactor.close(fd)
    }

    public func complete(_ completion: Completion) {
        if stopped { return }
        if completion.result == Int32(Self.informationSize) {
            // ssi_signo, the first field.
            onSignal(Int32(bitPattern: information.load(as: UInt32.self)))
        } else if completion.result < 0 && completion.result != -EAGAIN && completion.result != -EINTR {
            // A signalfd does not fail once made; if it did, reading again would spin.
            return stop()
        }
        if !stopped { readNext() }
    }

    private func readNext() {
        reactor.read(fd, into: information, count: Self.informationSize, handler: self, tag: 0)
    }
}
