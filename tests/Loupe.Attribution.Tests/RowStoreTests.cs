using Loupe.Attribution.Engine;

namespace Loupe.Attribution.Tests;

public sealed class RowStoreTests
{
    [Fact]
    public void Rows_beyond_the_budget_go_to_a_scratch_file_that_is_never_visible()
    {
        var dir = Directory.CreateTempSubdirectory("loupe-rows-");
        try
        {
            using (var store = new RowStore(5, 3, budgetBytes: 10, dir.FullName))
            {
                Assert.True(store.OnDisk);
                for (int r = 0; r < 3; r++) store.Append([r, r + 1, r + 2, r + 3, r + 4]);
                if (!OperatingSystem.IsWindows()) Assert.Empty(dir.GetFiles()); // unlinked while in use: a kill leaves nothing
                Assert.Equal([2f, 3, 4, 5, 6], store.Row(2).ToArray());
                Assert.Equal([0f, 1, 2, 3, 4], store.Row(0).ToArray());
            }
            Assert.Empty(dir.GetFiles());
            using var memory = new RowStore(5, 3, budgetBytes: 1000, dir.FullName);
            Assert.False(memory.OnDisk);
            memory.Append([1, 2, 3, 4, 5]);
            Assert.Equal([1f, 2, 3, 4, 5], memory.Row(0).ToArray());
        }
        finally { dir.Delete(true); }
    }
}
