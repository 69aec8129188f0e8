import CNGHTTP2
import PortForward
import Reactor
#if canImport(Glibc)
@preconcurrency import Glibc
#endif

/// Where a run happened, for the JSON file.
enum BenchEnvironment {
    static var kernel: String {
        var names = utsname()
        uname(&names)
        return withUnsafeBytes(of: &names.release) { raw in
            String(decoding: raw.prefix { $0 != 0 }, as: UTF8.self)
        }
    }

    static var cores: Int { Int(sysconf(Int32(_SC_NPROCESSORS_ONLN))) }

    static var nghttp2Version: String {
        guard let info = nghttp2_version(0), let text = info.pointee.version_str else { return "unknown" }
        return String(cString: text)
    }

    static var swiftVersion: String {
        #if compiler(>=6.4)
        return "6.4+"
        #elseif compiler(>=6.3)
        return "6.3"
        #elseif compiler(>=6.2)
        return "6.2"
        #elseif compiler(>=6.1)
        return "6.1"
        #else
        return "6.0"
        #endif
    }

    static var cpuModel: String {
        guard let info = readFile("/proc/cpuinfo") else { return "unknown" }
        for line in info.split(separator: "\n") where line.hasPrefix("model name") {
            if let colon = line.firstIndex(of: ":") { return String(line[line.index(after: colon)...]).trimmedSpaces }
        }
        return "unknown"
    }

    /// How the bench itself moves payload: DATA frames point into its pattern memory (nghttp2
    /// NO_COPY) and leave by writev; received DATA is only counted and checked.
    static let benchCopyMode = "buffers (NO_COPY DATA from memory, writev)"

    static func json(benchBackend: String, relayBackend: String?, relayCopy: String?, connector: String?) -> JSON {
        var members: [(String, JSON)] = [
            ("bench_io", .string(benchBackend)),
            ("bench_copy_mode", .string(benchCopyMode)),
        ]
        if let relayBackend { members.append(("relay_io", .string(relayBackend))) }
        if let relayCopy {
            let resolved = relayCopy == "auto" ? CopyMode.auto.resolved.rawValue : relayCopy
            members.append(("relay_copy_mode", .string(resolved)))
        }
        if let connector { members.append(("relay_connector", .string(connector))) }
        members += [
            ("kernel", .string(kernel)),
            ("cores", .integer(cores)),
            ("cpu", .string(cpuModel)),
            ("swift", .string(swiftVersion)),
            ("nghttp2", .string(nghttp2Version)),
            ("open_files_soft_limit", .integer(Int(Process.raiseOpenFileLimit().soft))),
        ]
        return .object(members)
    }
}

extension String {
    var trimmedSpaces: String {
        var slice = Substring(self)
        while let first = slice.first, first == " " || first == "\t" { slice.removeFirst() }
        while let last = slice.last, last == " " || last == "\t" { slice.removeLast() }
        return String(slice)
    }
}
