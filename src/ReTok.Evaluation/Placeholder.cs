namespace ReTok.Evaluation;
