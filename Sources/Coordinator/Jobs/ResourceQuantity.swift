import Foundation

/// CPU and memory amounts written the Kubernetes way, so one job file serves every backend.
///
/// CPU: whole or decimal cores (`2`, `1.5`) or millicores (`500m`). Memory: bytes with an optional
/// binary (`Ki Mi Gi Ti`) or decimal (`k M G T`) suffix (`4Gi`, `512Mi`, `2G`).
public enum ResourceQuantity {
    /// Millicores in a CPU quantity, or nil when the text is not one.
    public static func millicores(_ text: String) -> Int? {
        let trimmed = text.trimmingCharacters(in: .whitespaces)
        if trimmed.hasSuffix("m") {
            guard let value = Int(trimmed.dropLast()), value > 0 else { return nil }
            return value
        }
        guard let cores = Double(trimmed), cores > 0, cores < 1_000_000, cores.isFinite else { return nil }
        let milli = (cores * 1000).rounded()
        // Kubernetes refuses precision finer than a millicore.
        guard abs(milli - cores * 1000) < 1e-6, milli >= 1 else { return nil }
        return Int(milli)
    }

    /// Bytes in a memory quantity, or nil when the text is not one.
    public static func bytes(_ text: String) -> Int64? {
        let trimmed = text.trimmingCharacters(in: .whitespaces)
        let suffixes: [(String, Int64)] = [
            ("Ki", 1 << 10), ("Mi", 1 << 20), ("Gi", 1 << 30), ("Ti", 1 << 40),
            ("k", 1_000), ("M", 1_000_000), ("G", 1_000_000_000), ("T", 1_000_000_000_000),
        ]
        var number = Substring(trimmed)
        var scale: Int64 = 1
        for (suffix, factor) in suffixes where trimmed.hasSuffix(suffix) {
            number = trimmed.dropLast(suffix.count)
            scale = factor
            break
        }
        guard !number.isEmpty, number.allSatisfy(\.isNumber), let value = Int64(number), value > 0,
              value <= Int64.max / scale else { return nil }
        return value * scale
    }

    /// A CPU amount as Kubernetes prints it: whole cores when exact (`2`), else millicores (`1500m`).
    public static func cpuText(millicores: Int) -> String {
        millicores % 1000 == 0 ? "\(millicores / 1000)" : "\(millicores)m"
    }

    /// A memory amount in the largest binary unit that divides it exactly (`4Gi`, `1536Mi`).
    public static func memoryText(bytes: Int64) -> String {
        for (suffix, factor) in [("Ti", Int64(1) << 40), ("Gi", 1 << 30), ("Mi", 1 << 20), ("Ki", 1 << 10)]
        where bytes % factor == 0 {
            return "\(bytes / factor)\(suffix)"
        }
        return "\(bytes)"
    }

    /// Memory in whole mebibytes, rounded up (Slurm's `--mem` unit).
    public static func mebibytes(bytes: Int64) -> Int64 {
        (bytes + (1 << 20) - 1) >> 20
    }
}
