/// Incoming frames in, events out (RFC 6455 sections 5 and 6.2): the reader takes bytes split
/// anywhere, unmasks data payloads in place in the caller's buffer and reports them as ranges of it,
/// so a payload is handed on in the pieces it arrived in, without a copy. It keeps nothing of a
/// data payload; only an unfinished header (at most 14 bytes) and a control frame's payload
/// (at most 125 bytes) wait inside it for the rest.
public struct FrameReader: Sendable {
    public enum Role: Sendable {
        /// Reads a client's frames: each must be masked (section 5.1).
        case server
        /// Reads a server's frames: none may be masked.
        case client
    }

    /// What the parser expects next; the one place the reading switches on.
    private enum State: Sendable {
        case header
        case payload
        case controlPayload
        /// After a close or a protocol error: nothing more is read.
        case closed
    }

    private let role: Role
    public let limits: WebSocketLimits
    private var state = State.header
    private var header: [UInt8] = []
    /// Header bytes needed before the next decode can succeed.
    private var headerWanted = 2
    private var frame = FrameHeader(opcode: .binary, payloadLength: 0)
    private var mask: Mask?
    /// Bytes of the current frame's payload still to come.
    private var remaining = 0
    /// The data message between its first and last frames; control frames may come in between.
    private var message: MessageKind?
    private var messageBytes = 0
    private var control: [UInt8] = []

    public init(role: Role, limits: WebSocketLimits = WebSocketLimits()) {
        self.role = role
        self.limits = limits
        header.reserveCapacity(FrameHeader.maxEncodedLength)
        control.reserveCapacity(FrameHeader.maxControlPayload)
    }

    /// Payload bytes of the current data frame not yet received: a caller that wants to read them
    /// into a buffer of its choosing asks for at most this many.
    public var payloadRemaining: Int { state == .payload ? remaining : 0 }

    /// True once a close or a protocol error has been reported: the rest of the bytes are ignored.
    public var isClosed: Bool { state == .closed }

    /// Stops reading, for a protocol on top that found the peer's message unacceptable.
    public mutating func stop() { state = .closed }

    /// Reads all of `bytes`, appending what happened to `events` (which the caller reuses from call
    /// to call, so that reading allocates nothing). `.payload` ranges index `bytes`: the caller
    /// keeps that buffer for as long as it needs them.
    public mutating func receive(_ bytes: UnsafeMutableRawBufferPointer, into events: inout [FrameEvent]) {
        var index = 0
        let count = bytes.count
        while index < count {
            switch state {
            case .closed:
                return
            case .header:
                let take = min(headerWanted - header.count, count - index)
                header.append(contentsOf: UnsafeRawBufferPointer(rebasing: bytes[index..<(index + take)]))
                index += take
                if header.count < headerWanted { return }
                switch header.withUnsafeBytes({ FrameHeader.decode($0) }) {
                case .needMore(let wanted):
                    headerWanted = wanted
                case .invalid(let error):
                    fail(error, &events)
                case .header(let decoded, _):
                    header.removeAll(keepingCapacity: true)
                    headerWanted = 2
                    begin(decoded, &events)
                }
            case .payload:
                let take = min(remaining, count - index)
                let piece = UnsafeMutableRawBufferPointer(rebasing: bytes[index..<(index + take)])
                mask?.apply(piece)
                events.append(.payload(index..<(index + take)))
                index += take
                remaining -= take
                if remaining == 0 { endDataFrame(&events) }
            case .controlPayload:
                let take = min(remaining, count - index)
                let piece = UnsafeMutableRawBufferPointer(rebasing: bytes[index..<(index + take)])
                mask?.apply(piece)
                control.append(contentsOf: UnsafeRawBufferPointer(piece))
                index += take
                remaining -= take
                if remaining == 0 { endControlFrame(&events) }
            }
        }
    }

    private mutating func begin(_ decoded: FrameHeader, _ events: inout [FrameEvent]) {
        guard (decoded.mask != nil) == (role == .server) else {
            return fail(.masking(expected: role == .server), &events)
        }
        frame = decoded
        mask = decoded.mask.map { Mask(key: $0) }
        remaining = decoded.payloadLength
        if decoded.opcode.isControl {
            control.removeAll(keepingCapacity: true)
            state = .controlPayload
            if remaining == 0 { endControlFrame(&events) }
            return
        }
        switch decoded.opcode {
        case .continuation:
            guard message != nil else { return fail(.unexpectedContinuation, &events) }
        default:
            guard message == nil else { return fail(.unfinishedMessage, &events) }
            messageBytes = 0
        }
        guard decoded.payloadLength <= limits.maxMessageBytes - messageBytes else {
            return fail(.messageTooBig(limit: limits.maxMessageBytes), &events)
        }
        messageBytes += decoded.payloadLength
        if message == nil {
            let kind: MessageKind = decoded.opcode == .text ? .text : .binary
            message = kind
            events.append(.messageStart(kind))
        }
        state = .payload
        if remaining == 0 { endDataFrame(&events) }
    }

    private mutating func endDataFrame(_ events: inout [FrameEvent]) {
        state = .header
        if frame.fin {
            message = nil
            events.append(.messageEnd)
        }
    }

    private mutating func endControlFrame(_ events: inout [FrameEvent]) {
        state = .header
        switch frame.opcode {
        case .ping:
            events.append(.ping(control))
        case .pong:
            events.append(.pong(control))
        default:
            guard control.count != 1 else { return fail(.badClosePayload, &events) }
            if control.isEmpty {
                events.append(.close(code: nil, reason: ""))
            } else {
                let code = UInt16(control[0]) << 8 | UInt16(control[1])
                guard CloseCode.isValidOnWire(code),
                      let reason = String(validating: control[2...], as: UTF8.self) else {
                    return fail(.badClosePayload, &events)
                }
                events.append(.close(code: code, reason: reason))
            }
            state = .closed
        }
    }

    private mutating func fail(_ error: FrameError, _ events: inout [FrameEvent]) {
        events.append(.failed(error))
        state = .closed
    }
}

public enum MessageKind: Sendable, Equatable {
    case text
    case binary
}

/// What arrived. Each case says what the connection does about it; `answer` is that frame.
public enum FrameEvent: Sendable, Equatable {
    /// A data message begins; its payload follows in `.payload` events, then `.messageEnd`.
    case messageStart(MessageKind)
    /// Payload bytes of the current data message, unmasked, as a range of the buffer given to
    /// `receive`. Frame boundaries inside a message are not reported: they carry no meaning.
    case payload(Range<Int>)
    case messageEnd
    /// Answer with a pong carrying the same payload (section 5.5.2), ahead of queued data if possible.
    case ping([UInt8])
    /// Nothing to do (section 5.5.3: an unsolicited pong is a heartbeat); a keepalive may note it.
    case pong([UInt8])
    /// The peer closes: echo its code (unless we sent a close first), then close the TCP connection
    /// (section 7.1.1: the server closes it first). Nothing after this is read.
    case close(code: UInt16?, reason: String)
    /// The peer broke the protocol: send a close with `error.closeCode`, then close the connection.
    case failed(FrameError)

    /// The frame to write in answer (a server's: unmasked), nil when there is none.
    public var answer: [UInt8]? {
        switch self {
        case .ping(let payload): return FrameWriter.pong(payload)
        case .close(let code, _): return FrameWriter.close(code: code)
        case .failed(let error): return FrameWriter.close(code: error.closeCode)
        default: return nil
        }
    }
}
