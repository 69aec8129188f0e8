/// Why a SPDY connection cannot go on. Every case is a session error: the session has queued a
/// GOAWAY (with `goAwayStatus`) for the peer, and the caller should write it and close.
/// (Stream errors do not throw: they become RST_STREAM frames and `reset` events.)
public enum SPDYError: Error, Equatable, Sendable, CustomStringConvertible {
    /// A control frame of another SPDY version than 3.
    case unsupportedVersion(UInt16)
    /// A control frame longer than `SPDYLimits.maxControlFrameLength`.
    case frameTooLarge(type: UInt16, length: Int, limit: Int)
    /// A control frame whose length does not fit its type (a PING that is not 4 bytes...).
    case invalidFrameLength(type: UInt16, length: Int)
    /// A header block that inflates past `SPDYLimits.maxHeaderBlockSize`.
    case headerBlockTooLarge(limit: Int)
    /// A header block whose structure is wrong (count, lengths, an empty name).
    case invalidHeaderBlock(String)
    /// zlib refused the bytes (or could not start): the code it returned.
    case compression(Int32)
    /// A stream id the peer may not use here (0, even for a client, not above the last one).
    case invalidStreamID(UInt32, String)
    /// A DATA frame on stream 0.
    case dataOnStreamZero
    /// The caller asked for a frame on a stream that is not open for it (ended, reset, unknown).
    case streamNotWritable(UInt32)
    /// A DATA frame longer than SPDY's 24-bit length.
    case dataTooLong(Int)

    public var goAwayStatus: GoAwayStatus {
        switch self {
        case .compression, .streamNotWritable, .dataTooLong: .internalError
        default: .protocolError
        }
    }

    public var description: String {
        switch self {
        case .unsupportedVersion(let version): "SPDY version \(version) is not supported (3 is)"
        case .frameTooLarge(let type, let length, let limit):
            "control frame type \(type) of \(length) bytes is over the limit of \(limit)"
        case .invalidFrameLength(let type, let length): "control frame type \(type) cannot be \(length) bytes long"
        case .headerBlockTooLarge(let limit): "header block inflates past the limit of \(limit) bytes"
        case .invalidHeaderBlock(let reason): "invalid header block: \(reason)"
        case .compression(let code): "zlib failed (\(code))"
        case .invalidStreamID(let stream, let reason): "invalid stream id \(stream): \(reason)"
        case .dataOnStreamZero: "DATA frame on stream 0"
        case .streamNotWritable(let stream): "stream \(stream) is not open for sending"
        case .dataTooLong(let count): "DATA frame of \(count) bytes is over SPDY's 16 MiB - 1"
        }
    }
}
