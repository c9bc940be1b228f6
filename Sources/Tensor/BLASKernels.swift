import COpenBLAS
import Foundation

/// Which OpenBLAS kernels this process runs, for logs and benchmark headers.
///
/// OpenBLAS picks its kernels from the CPU model at load time. A CPU newer than the OpenBLAS
/// build (Debian 12's 0.3.21 does not know Emerald Rapids, model 207) falls back to the generic
/// "Prescott" SSE3 kernels even when the CPU has AVX2 and AVX-512, and every matmul runs several
/// times slower. `OPENBLAS_CORETYPE` (Haswell, SkylakeX, Zen…) overrides the choice; Sura only
/// reports it and never sets it, so tests run with whatever the environment says.
public enum BLASKernels {
    /// OpenBLAS's name for the kernels in use ("Haswell", "SkylakeX", "Prescott", …).
    public static var coreName: String {
        guard let name = openblas_get_corename() else { return "unknown" }
        return String(cString: name)
    }

    /// `OPENBLAS_CORETYPE=… (kernels: …)` for headers.
    public static var summary: String {
        let requested = ProcessInfo.processInfo.environment["OPENBLAS_CORETYPE"] ?? "(unset)"
        return "OPENBLAS_CORETYPE=\(requested) (OpenBLAS kernels: \(coreName))"
    }

    /// The header line of a benchmark: `summary` and the core count, with `fallbackWarning` on a
    /// second line when there is one.
    public static func header(cores: Int) -> String {
        "\(summary)  cores=\(cores)" + (fallbackWarning().map { "\n" + $0 } ?? "")
    }

    /// The flags of the first CPU in /proc/cpuinfo (empty where there is no such file).
    public static func cpuFlags(cpuinfo: String? = try? String(contentsOfFile: "/proc/cpuinfo", encoding: .utf8)) -> Set<String> {
        guard let cpuinfo else { return [] }
        for line in cpuinfo.split(separator: "\n") where line.hasPrefix("flags") {
            guard let colon = line.firstIndex(of: ":") else { continue }
            return Set(line[line.index(after: colon)...].split(separator: " ").map(String.init))
        }
        return []
    }

    /// A one-line warning when OpenBLAS runs generic kernels on a CPU that has AVX2 (so a
    /// better kernel set exists and `OPENBLAS_CORETYPE` would select it); nil otherwise.
    public static func fallbackWarning(coreName: String = coreName, cpuFlags: Set<String> = cpuFlags()) -> String? {
        let generic: Set<String> = ["prescott", "core2", "katmai", "coppermine", "northwood", "banias", "atom", "unknown"]
        guard generic.contains(coreName.lowercased()), cpuFlags.contains("avx2"), cpuFlags.contains("fma") else { return nil }
        let avx512 = cpuFlags.contains("avx512f")
        let choice = avx512 ? "OPENBLAS_CORETYPE=SkylakeX (AVX-512) or Haswell (AVX2)" : "OPENBLAS_CORETYPE=Haswell"
        return "warning: OpenBLAS did not recognise this CPU and runs its generic \(coreName) kernels, although the CPU has "
            + (avx512 ? "AVX2 and AVX-512" : "AVX2") + ": matmuls run several times slower than they could; set \(choice) "
            + "in the environment to choose faster kernels"
    }
}
