import HTTP2
import Reactor
#if canImport(Glibc)
@preconcurrency import Glibc
#endif

/// One HTTP/1.1 request and its answer on a connected socket, through the reactor: the client's
/// pod read and its SPDY or WebSocket upgrade request, before the connection becomes a SPDY
/// session. Through the reactor rather than blocking as the h2c upgrade does, because over TLS the
/// socket is the inner end of a `TLSConnection` pump, which only the running loop moves.
///
/// The answer's head, and its body up to `maximumBody` (by `Content-Length`; none after a `101`),
/// come back with the bytes read past them. The whole exchange has one deadline. The socket stays
/// the caller's, whatever the outcome.
final class HTTPExchange: CompletionHandler {
    enum Outcome {
        case answered(ResponseHead, body: [UInt8], rest: [UInt8])
        /// The connection closed, failed, or the deadline passed: one line.
        case failed(String)
    }

    let fd: FileDescriptor
    private let reactor: ReactorBackend
    private var request: [UInt8] = []
    private var written = 0
    private var bytes: [UInt8] = []
    private var scanned = 0
    private var head: ResponseHead?
    private var timer: TimerID = 0
    private var done: ((Outcome) -> Void)?
    private var deadlineText = ""

    static let maximumBody = 1 << 20

    private enum Tag: UInt32 { case write = 1, receive, deadline }

    init(fd: FileDescriptor, reactor: ReactorBackend) {
        self.fd = fd
        self.reactor = reactor
    }

    /// Sends `request` and reports its answer once (unless `cancel` comes first).
    func send(_ request: String, timeoutSeconds: Double, timeoutText: String, done: @escaping (Outcome) -> Void) {
        self.request = Array(request.utf8)
        written = 0
        bytes.removeAll(keepingCapacity: true)
        scanned = 0
        head = nil
        self.done = done
        deadlineText = timeoutText
        timer = reactor.timer(nanoseconds: UInt64(max(timeoutSeconds, 0.001) * 1e9), handler: self, tag: Tag.deadline.rawValue)
        writeNext()
    }

    /// No report will come (the caller closes the socket, which cancels what is pending).
    func cancel() {
        guard done != nil else { return }
        done = nil
        reactor.cancelTimer(timer)
    }

    private func writeNext() {
        request.withUnsafeBytes { buffer in
            reactor.write(fd, from: buffer.baseAddress! + written, count: buffer.count - written, handler: self, tag: Tag.write.rawValue)
        }
    }

    private func finish(_ outcome: Outcome) {
        guard let done else { return }
        cancel()
        done(outcome)
    }

    func complete(_ completion: Completion) {
        defer { if completion.buffer != BufferPool.none { reactor.buffers.release(completion.buffer) } }
        guard done != nil else { return }
        switch Tag(rawValue: completion.tag) {
        case .write:
            guard completion.result > 0 else {
                return finish(.failed("cannot send the request: \(SystemError.reason(-completion.result))"))
            }
            written += Int(completion.result)
            if written < request.count { return writeNext() }
            reactor.receive(fd, handler: self, tag: Tag.receive.rawValue)
        case .receive:
            guard completion.result > 0 else {
                return finish(.failed(completion.result == 0 ? "the connection closed before the answer"
                                      : "cannot read the answer: \(SystemError.reason(-completion.result))"))
            }
            bytes.append(contentsOf: UnsafeRawBufferPointer(start: reactor.buffers.pointer(completion.buffer), count: Int(completion.result)))
            received()
        case .deadline:
            finish(.failed(deadlineText))
        case nil:
            break
        }
    }

    private func received() {
        if head == nil {
            switch bytes.withUnsafeBytes({ ResponseHead.parse($0, scannedBefore: scanned) }) {
            case .incomplete(let upTo):
                scanned = upTo
                return reactor.receive(fd, handler: self, tag: Tag.receive.rawValue)
            case .invalid(_, let reason):
                return finish(.failed("a malformed answer (\(reason))"))
            case .complete(let parsed):
                head = parsed
            }
        }
        let head = head!
        let bodyLength = head.status == 101 ? 0 : min(head.contentLength, Self.maximumBody)
        guard bytes.count >= head.length + bodyLength else {
            return reactor.receive(fd, handler: self, tag: Tag.receive.rawValue)
        }
        finish(.answered(head, body: Array(bytes[head.length..<(head.length + bodyLength)]),
                         rest: Array(bytes[(head.length + bodyLength)...])))
    }
}
