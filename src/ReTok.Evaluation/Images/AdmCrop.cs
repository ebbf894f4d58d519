namespace ReTok.Evaluation.Images;

/// <summary>
/// ADM's <c>center_crop_arr</c> (guided-diffusion image_datasets.py; ReTok dataset/augmentation.py and val_ddp.py), bit-identical to Pillow:
/// BOX-halve (floor sizes) while the short side is at least 2*size, one BICUBIC resize so the short side becomes size
/// (target sizes rounded half-to-even like Python's round), then a centre crop with the odd pixel going to the bottom/right.
/// </summary>
public static class AdmCrop
{
    public static RgbImage CenterCropArr(RgbImage img, int size = 256)
    {
        if (size <= 0) throw new ArgumentOutOfRangeException(nameof(size));
        while (Math.Min(img.Width, img.Height) >= 2 * size)
            img = PilResize.Resize(img, img.Width / 2, img.Height / 2, PilFilter.Box);
        double scale = (double)size / Math.Min(img.Width, img.Height);
        int w = (int)Math.Round(img.Width * scale, MidpointRounding.ToEven), h = (int)Math.Round(img.Height * scale, MidpointRounding.ToEven);
        img = PilResize.Resize(img, w, h, PilFilter.Bicubic);
        int cy = (img.Height - size) / 2, cx = (img.Width - size) / 2;
        return img.Crop(cx, cy, size, size);
    }
}
