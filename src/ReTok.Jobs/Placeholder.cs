namespace ReTok.Jobs;
