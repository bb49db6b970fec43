namespace Loupe.Circuits;

/// <summary>
/// Circuit analysis (issue 11): weight-based analysis (factored QK/OV matrices, composition scores),
/// head detection from behaviour, and edge-level circuit discovery.
/// </summary>
internal static class CircuitsAssembly;
