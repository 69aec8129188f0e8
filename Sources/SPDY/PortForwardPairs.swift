/// The `portforward.k8s.io` stream semantics on a SPDY connection, as a value: the caller reports
/// each SYN_STREAM and the clock, and performs the decisions (SYN_REPLY, RST_STREAM, connect, write
/// the timeout message) itself. It knows nothing of sockets or of the session.
///
/// One forwarded connection is a pair of streams: an error stream (`streamtype: error`), then a
/// data stream (`streamtype: data`), both with `port` and, from current clients, the same
/// `requestid`. A kubelet pairs them by `requestid`, or for clients that send none, by the error
/// stream's id and the data stream's id minus 2 (kubelet `pkg/kubelet/cri/streaming/portforward/
/// httpstream.go`); this does the same. Both must arrive within the pairing timeout.
public struct PortForwardPairs: Sendable {
    /// kubelet's stream creation timeout.
    public static let defaultPairingTimeout: UInt64 = 30_000_000_000
    /// What a kubelet writes on the error stream of a pair whose partner never came.
    public static let timeoutMessage = "timed out waiting for streams"

    public enum StreamType: String, Sendable {
        case error
        case data
    }

    public enum Key: Hashable, Sendable {
        case requestID(String)
        /// A client without `requestid`: the error stream's id.
        case streamID(UInt32)
    }

    public struct Pair: Equatable, Sendable {
        public var key: Key
        /// The pod port: the data stream's (a kubelet reads it from there).
        public var port: UInt16
        public var errorStream: UInt32
        public var dataStream: UInt32

        public init(key: Key, port: UInt16, errorStream: UInt32, dataStream: UInt32) {
            self.key = key
            self.port = port
            self.errorStream = errorStream
            self.dataStream = dataStream
        }
    }

    public enum Decision: Equatable, Sendable {
        /// SYN_REPLY at once (the client opens the data stream only after the error stream's reply);
        /// the partner has not come yet.
        case reply
        /// SYN_REPLY at once, and the pair is complete: connect to `pair.port` and join the data
        /// stream to that socket. When it ends, perform `endSteps` and call `forwardEnded`.
        case replyAndForward(Pair)
        /// RST_STREAM with this status; `reason` is for the log.
        case reset(ResetStatus, reason: String)
    }

    /// A pair that was not complete in time. Write `message` on `errorStream` and FIN it (if the
    /// error stream came), reset `dataStream` (if it came). It is forgotten already.
    public struct Expiry: Equatable, Sendable {
        public var key: Key
        public var errorStream: UInt32?
        public var dataStream: UInt32?
        public var message: String
    }

    /// What the server sends when a forward ends, in this order.
    public enum EndStep: Equatable, Sendable {
        /// UTF-8 text as DATA on the error stream: the failure kubectl prints.
        case write(stream: UInt32, text: String)
        /// DATA with FIN (empty).
        case finish(stream: UInt32)
    }

    private struct Member: Sendable {
        var stream: UInt32
        var port: UInt16
    }

    private struct Entry: Sendable {
        var error: Member?
        var data: Member?
        /// When the pair must be complete; nil once it is.
        var deadline: UInt64?
    }

    public let pairingTimeout: UInt64
    private var entries: [Key: Entry] = [:]
    private var keyOfStream: [UInt32: Key] = [:]
    /// Deadlines in the order they were set, which is their order (one timeout, a monotonic
    /// clock): the earliest is found, and the due ones taken, without scanning every pair. An
    /// element whose pair is complete, gone, or made anew since is stale and skipped when
    /// reached. A client opening 16,384 lone error streams would otherwise cost a scan of all
    /// of them per SYN_STREAM (seconds of the reactor thread, every other connection waiting).
    private var deadlines: [(deadline: UInt64, key: Key)] = []
    private var deadlinesStart = 0

    public init(pairingTimeout: UInt64 = defaultPairingTimeout) {
        self.pairingTimeout = pairingTimeout
    }

    /// Pairs waiting for a partner or forwarding.
    public var count: Int { entries.count }

    /// The earliest time `expire` has something to do.
    public var nextDeadline: UInt64? {
        mutating get {
            dropStaleDeadlines()
            return deadlinesStart < deadlines.count ? deadlines[deadlinesStart].deadline : nil
        }
    }

    private func isCurrent(_ element: (deadline: UInt64, key: Key)) -> Bool {
        entries[element.key]?.deadline == element.deadline
    }

    private mutating func dropStaleDeadlines() {
        while deadlinesStart < deadlines.count, !isCurrent(deadlines[deadlinesStart]) { deadlinesStart += 1 }
        if deadlinesStart == deadlines.count {
            deadlines.removeAll(keepingCapacity: deadlines.capacity <= 1024)
            deadlinesStart = 0
        } else if deadlinesStart >= 1024, deadlinesStart * 2 >= deadlines.count {
            deadlines.removeFirst(deadlinesStart)
            deadlinesStart = 0
        }
    }

    /// A SYN_STREAM arrived (`now` in nanoseconds of any monotonic clock, the same for `expire`).
    public mutating func opened(stream: UInt32, headers: HeaderBlock, now: UInt64) -> Decision {
        guard let typeName = headers["streamtype"] else {
            return .reset(.protocolError, reason: "stream \(stream) has no streamtype")
        }
        guard let type = StreamType(rawValue: typeName) else {
            return .reset(.protocolError, reason: "stream \(stream) has an unknown streamtype \"\(typeName)\"")
        }
        guard let portText = headers["port"], let port = UInt16(portText), port > 0 else {
            return .reset(.protocolError, reason: "stream \(stream) has an invalid port \"\(headers["port"] ?? "")\"")
        }
        let key: Key
        if let requestID = headers["requestid"] {
            key = .requestID(requestID)
        } else {
            key = .streamID(type == .error ? stream : stream &- 2)
        }
        let isNew = entries[key] == nil
        var entry = entries[key] ?? Entry(deadline: now &+ pairingTimeout)
        let member = Member(stream: stream, port: port)
        switch type {
        case .error:
            guard entry.error == nil else {
                return .reset(.protocolError, reason: "stream \(stream): a second error stream for \(key)")
            }
            entry.error = member
        case .data:
            guard entry.data == nil else {
                return .reset(.protocolError, reason: "stream \(stream): a second data stream for \(key)")
            }
            entry.data = member
        }
        keyOfStream[stream] = key
        guard let error = entry.error, let data = entry.data else {
            entries[key] = entry
            if isNew, let deadline = entry.deadline { deadlines.append((deadline, key)) }
            return .reply
        }
        entry.deadline = nil
        entries[key] = entry
        return .replyAndForward(Pair(key: key, port: data.port, errorStream: error.stream, dataStream: data.stream))
    }

    /// A stream of a pair still waiting went away (reset by the peer): its partner may come and
    /// wait for a new one. Streams of a complete pair end with the forward instead.
    public mutating func streamGone(_ stream: UInt32) {
        guard let key = keyOfStream[stream], var entry = entries[key], entry.deadline != nil else { return }
        keyOfStream[stream] = nil
        if entry.error?.stream == stream { entry.error = nil }
        if entry.data?.stream == stream { entry.data = nil }
        entries[key] = entry.error == nil && entry.data == nil ? nil : entry
    }

    /// The forward of `pair` is over (after its `endSteps`): its key may be used again.
    public mutating func forwardEnded(_ pair: Pair) {
        entries[pair.key] = nil
        keyOfStream[pair.errorStream] = nil
        keyOfStream[pair.dataStream] = nil
    }

    /// The pairs whose partner did not come in time, forgotten as they are returned.
    public mutating func expire(now: UInt64) -> [Expiry] {
        var expired: [Expiry] = []
        while let deadline = nextDeadline, deadline <= now {
            let key = deadlines[deadlinesStart].key
            deadlinesStart += 1
            let entry = entries[key]!
            expired.append(Expiry(key: key, errorStream: entry.error?.stream, dataStream: entry.data?.stream,
                                  message: Self.timeoutMessage))
            entries[key] = nil
            if let stream = entry.error?.stream { keyOfStream[stream] = nil }
            if let stream = entry.data?.stream { keyOfStream[stream] = nil }
        }
        return expired
    }

    /// How a server ends a forward: the failure (if any) as text on the error stream, FIN on the
    /// error stream, then FIN on the data stream. The error stream must always be ended: kubectl
    /// waits for that before it closes its local socket. The data stream's FIN is skipped by the
    /// caller if its side already ended it (the pod half-closed earlier).
    public static func endSteps(for pair: Pair, failure: String? = nil) -> [EndStep] {
        var steps: [EndStep] = []
        if let failure { steps.append(.write(stream: pair.errorStream, text: failure)) }
        steps.append(.finish(stream: pair.errorStream))
        steps.append(.finish(stream: pair.dataStream))
        return steps
    }
}
