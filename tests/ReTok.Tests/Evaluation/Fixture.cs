using ReTok.Models.IO;

namespace ReTok.Tests.Evaluation;

/// <summary>Fixtures written by tests/fixtures/gen/evaluation.py (see its docstring for what is reference code).</summary>
internal static class Fixture
{
    public static string Dir => Path.Combine(AppContext.BaseDirectory, "fixtures", "evaluation");
    public static string PathOf(string name) => Path.Combine(Dir, name);
    public static Dictionary<string, NpyArray> Npz(string name) => ReTok.Models.IO.Npz.Load(PathOf(name));

    public static double MaxAbs(float[] a, float[] b)
    {
        Assert.Equal(a.Length, b.Length);
        double m = 0;
        for (int i = 0; i < a.Length; i++) m = Math.Max(m, Math.Abs((double)a[i] - b[i]));
        return m;
    }

    public static double MaxAbs(float[] a) => a.Max(v => Math.Abs((double)v));
}
