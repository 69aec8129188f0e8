import CLinuxShim
import HTTP2
import Reactor
import Yams
#if canImport(Glibc)
@preconcurrency import Glibc
#endif

/// A problem with a file read at start (the pods file, the token file, the authorization file):
/// one line, naming the file and, where there is one, the line.
public struct ConfigFileError: Error, CustomStringConvertible, Sendable {
    public var description: String

    public init(description: String) {
        self.description = description
    }
}

/// What the relay's start-up files have in common: how they are read, and how YAML is parsed.
enum ConfigFile {
    /// A regular file of at most `maximumSize` bytes of UTF-8. Anything else (a FIFO, whose
    /// open or read could wait forever; a directory; a device) is refused with one line naming
    /// the file as `kind` (`pods file`).
    static func read(_ path: String, kind: String, maximumSize: Int) throws -> String {
        // stat first: a FIFO or a device is refused without being opened.
        var status = stat()
        guard stat(path, &status) == 0 else { throw SystemError("cannot read \(kind)", subject: path) }
        try requireRegular(status, path, kind)
        var fd: Int32
        repeat { fd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC | O_NOCTTY) } while fd < 0 && pf_errno() == EINTR
        guard fd >= 0 else { throw SystemError("cannot read \(kind)", subject: path) }
        defer { close(fd) }
        // Again on what was opened: the path may have been replaced in between.
        guard fstat(fd, &status) == 0 else { throw SystemError("cannot read \(kind)", subject: path) }
        try requireRegular(status, path, kind)
        if Int(status.st_size) > maximumSize {
            throw ConfigFileError(description: "\(kind) \(path) is larger than \(size(maximumSize)) (\(status.st_size) bytes)")
        }
        // Read to the end whatever the size said (a file may grow, procfs files say 0), but never
        // past the limit.
        var bytes: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 65536)
        while bytes.count <= maximumSize {
            let count = Glibc.read(fd, &chunk, chunk.count)
            if count < 0 {
                if pf_errno() == EINTR { continue }
                throw SystemError("cannot read \(kind)", subject: path)
            }
            if count == 0 { break }
            bytes.append(contentsOf: chunk[..<count])
        }
        if bytes.count > maximumSize {
            throw ConfigFileError(description: "\(kind) \(path) is larger than \(size(maximumSize))")
        }
        guard let text = String(validating: bytes, as: UTF8.self) else {
            throw ConfigFileError(description: "\(kind) \(path) is not UTF-8 text")
        }
        return text
    }

    private static func size(_ bytes: Int) -> String {
        bytes >= 1 << 20 && bytes % (1 << 20) == 0 ? "\(bytes >> 20) MiB" : "\(bytes) bytes"
    }

    private static func requireRegular(_ status: stat, _ path: String, _ what: String) throws {
        let kind: String
        switch status.st_mode & S_IFMT {
        case S_IFREG: return
        case S_IFDIR: kind = "a directory"
        case S_IFIFO: kind = "a FIFO"
        case S_IFCHR, S_IFBLK: kind = "a device"
        case S_IFSOCK: kind = "a socket"
        default: kind = "not a regular file"
        }
        throw ConfigFileError(description: "\(what) \(path) is \(kind), not a regular file")
    }

    /// The YAML document, nesting checked first (`NestingDepth`; `needs` says how deep the
    /// file's own format goes, for the message). compose, not load: aliases stay shared nodes,
    /// so a small file cannot expand into a huge tree ("billion laughs"), and each scalar keeps
    /// its resolved type for the messages.
    static func compose(_ text: String, source: String, needs: String) throws -> Node? {
        do { return try NestingDepth.compose(text) } catch let error as NestingDepth.TooDeep {
            throw ConfigFileError(description: "\(source):\(error.line): lists and mappings nested more than \(NestingDepth.limit) deep (\(needs))")
        } catch {
            throw ConfigFileError(description: "\(source)\(yamlProblem(error))")
        }
    }

    /// ":LINE:COLUMN: not valid YAML: PROBLEM", on one line (Yams's own text spans three).
    private static func yamlProblem(_ error: any Error) -> String {
        guard let error = error as? YamlError else { return ": not valid YAML: \(oneLine("\(error)"))" }
        switch error {
        case .scanner(let context, let problem, let mark, _),
             .parser(let context, let problem, let mark, _),
             .composer(let context, let problem, let mark, _):
            let during = context.map { " (\($0.text) at line \($0.mark.line))" } ?? ""
            return ":\(mark.line):\(mark.column): not valid YAML: \(problem)\(during)"
        case .reader(let problem, let offset, _, _):
            return ": not valid YAML: \(problem)\(offset.map { " at byte \($0)" } ?? "")"
        default:
            return ": not valid YAML: \(oneLine("\(error)"))"
        }
    }
}

extension Node {
    /// What a node is, for a message: `null`, `the number 3`, `the string "web"`, `a list`.
    var described: String {
        switch self {
        case .scalar(let scalar):
            let name = tagName
            if name == .null { return "null" }
            if name == .bool { return "the boolean \(scalar.string)" }
            if name == .int || name == .float { return "the number \(scalar.string)" }
            if name == .str { return "the string \(quoted(scalar.string))" }
            return "\(tag) \(quoted(scalar.string))"
        case .sequence: return "a list"
        case .mapping: return "a mapping"
        }
    }
}

func oneLine(_ text: String) -> String {
    text.split(whereSeparator: \.isNewline).map { String($0).trimmed }.joined(separator: " ")
}
