namespace ReTok.Models.Images;

/// <summary>
/// ADM's crops (guided-diffusion image_datasets.py; ReTok dataset/augmentation.py and val_ddp.py), bit-identical to Pillow:
/// BOX-halve (floor sizes) while the short side is at least 2*S, one BICUBIC resize so the short side becomes S
/// (target sizes rounded half-to-even like Python's round), then a crop.
/// </summary>
public static class AdmCrop
{
    /// <summary>Draws an integer in [lo, hi) (Python random.randrange semantics).</summary>
    public delegate long RandRange(long lo, long hi);

    /// <summary><c>center_crop_arr</c> (evaluation): S = size, centre crop with the odd pixel going to the bottom/right.</summary>
    public static RgbImage CenterCropArr(RgbImage img, int size = 256)
    {
        if (size <= 0) throw new ArgumentOutOfRangeException(nameof(size));
        img = ShortSideTo(img, size);
        int cy = (img.Height - size) / 2, cx = (img.Width - size) / 2;
        return img.Crop(cx, cy, size, size);
    }

    /// <summary><c>random_crop_arr</c> (training), with the random draws injected: S = randrange(ceil(size/maxFrac),
    /// ceil(size/minFrac)+1), then crop_y = randrange(H-size+1), crop_x = randrange(W-size+1).</summary>
    public static RgbImage RandomCropArr(RgbImage img, int size, RandRange randrange, double minCropFrac = 0.8, double maxCropFrac = 1.0)
    {
        if (size <= 0) throw new ArgumentOutOfRangeException(nameof(size));
        long s = randrange((long)Math.Ceiling(size / maxCropFrac), (long)Math.Ceiling(size / minCropFrac) + 1);
        img = ShortSideTo(img, (int)s);
        int cy = (int)randrange(0, img.Height - size + 1), cx = (int)randrange(0, img.Width - size + 1);
        return img.Crop(cx, cy, size, size);
    }

    static RgbImage ShortSideTo(RgbImage img, int side)
    {
        while (Math.Min(img.Width, img.Height) >= 2 * side)
            img = PilResize.Resize(img, img.Width / 2, img.Height / 2, PilFilter.Box);
        double scale = (double)side / Math.Min(img.Width, img.Height);
        int w = (int)Math.Round(img.Width * scale, MidpointRounding.ToEven), h = (int)Math.Round(img.Height * scale, MidpointRounding.ToEven);
        return PilResize.Resize(img, w, h, PilFilter.Bicubic);
    }
}
