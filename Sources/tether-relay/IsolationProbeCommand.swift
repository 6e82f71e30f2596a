import Glibc
import TetherIO

/// `tether-relay isolation-probe PATH...`: tries to connect to each unix socket path and to
/// list each directory, one line per path (`PATH connected`, `PATH listed N`, or `PATH <error>`).
/// A diagnostic for the Docker isolation mode, run inside a session container with
/// `docker exec` (the image has no shell): it shows what that container can reach.
enum IsolationProbeCommand {
    static func main(_ paths: [String]) -> Never {
        var out = ""
        for path in paths {
            var st = stat()
            if lstat(path, &st) == 0, (st.st_mode & S_IFMT) == S_IFDIR {
                if let dir = opendir(path) {
                    var n = 0
                    while readdir(dir) != nil { n += 1 }
                    closedir(dir)
                    out += "\(path) listed \(n - 2)\n"
                } else {
                    out += "\(path) \(String(cString: strerror(errno)))\n"
                }
                continue
            }
            do {
                let fd = try Socket.connectUnixBlocking(path: path)
                close(fd)
                out += "\(path) connected\n"
            } catch {
                out += "\(path) \(String(cString: strerror(error.errno)))\n"
            }
        }
        Output.standardOutput(out)
        exit(0)
    }
}
